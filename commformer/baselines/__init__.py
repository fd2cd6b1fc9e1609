"""Baselines on the policy seam (commformer/protocol.py): recurrent MAPPO and IPPO, and the classic communication
methods (docs/methods/)."""
