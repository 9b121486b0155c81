"""The web dashboard: a static single page over the REST API, and its login sessions."""
