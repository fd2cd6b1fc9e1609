"""MAPPO and IPPO with a recurrent (GRU) actor (docs/methods/mappo.md): no communication.

- MAPPO: actor obs_i -> Linear, ReLU -> GRU -> Linear, ReLU -> Linear -> logits (parameters shared by all agents);
  a centralised recurrent critic of the same form on the env's global state with agent i's one-hot id appended
  (`algo.critic_input=state`, default) or on the joint observation with the id (`joint_obs`).
- IPPO: one trunk obs_i -> Linear, ReLU -> GRU shared by an actor head and a critic head (each Linear, ReLU, Linear),
  every agent on its own observation only (parameters shared by all agents).

Shapes: B envs, N agents, O obs width, S global-state width, A actions, H hidden width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from commformer.baselines.recurrent import RecurrentConfig, RecurrentPolicy, StepOut, gru, mlp
from commformer.config import check
from commformer.protocol import PolicyEntry

CRITIC_INPUTS = ("state", "joint_obs")


@dataclass
class MAPPOConfig(RecurrentConfig):
    """MAPPO's keys (docs/methods/mappo.md)."""

    name: str = "mappo"
    policy: str = "mappo"
    critic_input: str = "state"
    """what the centralised critic reads besides agent i's id: state (the env's global state) | joint_obs (every
    agent's observation, concatenated)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.critic_input in CRITIC_INPUTS,
              f"algo.critic_input={self.critic_input!r}; allowed: {', '.join(CRITIC_INPUTS)}")


@dataclass
class IPPOConfig(RecurrentConfig):
    """IPPO's keys (docs/methods/mappo.md)."""

    name: str = "ippo"
    policy: str = "ippo"


class MAPPOPolicy(RecurrentPolicy):
    """Recurrent actor on own observations, recurrent centralised critic."""

    state_names = ("actor", "critic")

    def __init__(self, algo: MAPPOConfig, spec, seed: int) -> None:
        super().__init__(spec.n_agents, algo.hidden)
        torch.manual_seed(seed)
        o, n, h, f = spec.obs_dim, spec.n_agents, algo.hidden, algo.fc
        self.critic_input = algo.critic_input
        self.uses_state = algo.critic_input == "state"
        c = (spec.state_dim if self.uses_state else n * o) + n
        self.actor_in, self.actor_gru, self.actor_out = nn.Linear(o, f), nn.GRUCell(f, h), mlp(h, f, spec.n_actions)
        self.critic_in, self.critic_gru, self.critic_out = nn.Linear(c, f), nn.GRUCell(f, h), mlp(h, f, 1)

    def critic_embedding(self, obs: Tensor, state: Optional[Tensor]) -> Tensor:
        """critic_in applied to [joint, one-hot id of agent i] for every agent: [B,N,F]. The joint input (the global
        state [B,S], or the joint observation) is the same for every agent, so its product with the weights is taken
        once per env and the id's column of the weights added per agent (the same linear map as on the concatenated
        input, N times fewer multiplications)."""
        B, N = obs.shape[:2]
        joint = state if self.uses_state else obs.reshape(B, -1)
        if joint is None:
            raise ValueError("MAPPO with algo.critic_input=state needs the env's global state (keyword state)")
        w = self.critic_in.weight  # [F, S+N]
        S = joint.shape[-1]
        per_env = nn.functional.linear(joint, w[:, :S])  # [B,F]
        per_agent = w[:, S:].t() + self.critic_in.bias  # [N,F]: W_id e_i + b
        return per_env[:, None, :] + per_agent

    splits_recurrence = True

    def core_inputs(self, obs, alive, state) -> dict[str, Tensor]:
        return {"actor": torch.relu(self.actor_in(obs)),
                "critic": torch.relu(self.critic_embedding(obs, state))}

    def recur(self, x, hidden) -> dict[str, Tensor]:
        return {"actor": gru(self.actor_gru, x["actor"], hidden["actor"]),
                "critic": gru(self.critic_gru, x["critic"], hidden["critic"])}

    def read(self, obs, alive, state, nxt, choices, generator, deterministic) -> StepOut:
        return StepOut(nxt["actor"], nxt["critic"], dict(nxt))


class IPPOPolicy(RecurrentPolicy):
    """One recurrent trunk per agent (shared parameters) with an actor and a critic head, own observation only."""

    state_names = ("actor",)

    def __init__(self, algo: IPPOConfig, spec, seed: int) -> None:
        super().__init__(spec.n_agents, algo.hidden)
        torch.manual_seed(seed)
        o, h, f = spec.obs_dim, algo.hidden, algo.fc
        self.embed, self.core = nn.Linear(o, f), nn.GRUCell(f, h)
        self.actor_out, self.critic_out = mlp(h, f, spec.n_actions), mlp(h, f, 1)

    splits_recurrence = True

    def core_inputs(self, obs, alive, state) -> dict[str, Tensor]:
        return {"actor": torch.relu(self.embed(obs))}

    def recur(self, x, hidden) -> dict[str, Tensor]:
        return {"actor": gru(self.core, x["actor"], hidden["actor"])}

    def read(self, obs, alive, state, nxt, choices, generator, deterministic) -> StepOut:
        return StepOut(nxt["actor"], nxt["actor"], dict(nxt))


MAPPO = PolicyEntry(MAPPOConfig, MAPPOPolicy)
IPPO = PolicyEntry(IPPOConfig, IPPOPolicy)
