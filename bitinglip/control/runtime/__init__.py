"""The control loop: its error boundary, the controller lease, the doorbell, the dispatcher."""
