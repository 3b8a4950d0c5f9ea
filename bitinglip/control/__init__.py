"""The control plane: state, queue, placement and sessions. Never imports a front end."""
