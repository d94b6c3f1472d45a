"""`contacto-billing`: one module per command group, each exposing `register(subparsers)`."""
