"""Placeholder package: the Flower fed_client app arrives with the federation issue."""
