"""The tenant side of the federation: the Flower ClientApp (app.py), its local training with DP-SGD and its state."""
