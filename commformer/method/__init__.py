"""The method: the communication graph, the temporal gate, relation attention, the CommFormer network and the
acting agent that combines them."""
