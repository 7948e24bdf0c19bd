"""Built-in plugins of manet, registered by dotted name like any third-party plugin."""
