"""Batched multi-tenant network simulator and its Gymnasium / PettingZoo interfaces."""
