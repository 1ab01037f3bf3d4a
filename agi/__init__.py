"""The Asterisk side of omnicc: FastAGI protocol layer, server and handlers."""
