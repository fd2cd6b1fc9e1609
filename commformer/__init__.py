"""CommFormer: multi-agent PPO with a learned communication graph, graph-masked attention and a temporal gate."""

__version__ = "0.1.0"
