"""The console's views: one module each, all built on `base.View`."""
