"""Tree models as flat arrays (``ensemble``), compiled to native code (``native``) in the
background (``compiler``)."""
