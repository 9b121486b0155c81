"""The application around the parts: config, plugins, the opened stores, the server and its
supervisor, the command line and the demo."""
