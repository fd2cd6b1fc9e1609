"""Rollout storage [T,B,N,...] (with what the policy stores to replay its acting) and its collection from a VecEnv.

T rollout length, B envs, N agents, O obs width, A actions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from commformer.protocol import Policy, state_kwarg
from envs.core import Step, VecEnv


@dataclass
class Rollout:
    """One rollout. Values are in the value normaliser's units, except final_values / last_values (raw)."""

    obs: Tensor  # [T,B,N,O] f32
    state: Tensor  # [T,B,S] f32 (the env's global state)
    avail: Tensor  # [T,B,N,A] bool
    alive: Tensor  # [T,B,N] bool
    active: Tensor  # [T,B,N] bool
    actions: Tensor  # [T,B,N] long
    log_prob: Tensor  # [T,B,N] f32
    values: Tensor  # [T,B,N] f32 (normalised)
    rewards: Tensor  # [T,B,N] f32
    terminated: Tensor  # [T,B] bool
    truncated: Tensor  # [T,B] bool
    stored: dict[str, Tensor]  # [T,B,...] each: what the policy stores per step (Policy.storage)
    final_values: Tensor  # [T,B,N] f32 raw V(final_obs_t) where truncated_t, else 0
    last_values: Tensor  # [B,N] f32 raw V(obs_T)

    @staticmethod
    def allocate(T: int, B: int, N: int, O: int, S: int, A: int, storage: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device) -> "Rollout":
        f32, b = dict(device=device), dict(device=device, dtype=torch.bool)
        return Rollout(
            obs=torch.zeros(T, B, N, O, **f32), state=torch.zeros(T, B, S, **f32), avail=torch.zeros(T, B, N, A, **b),
            alive=torch.zeros(T, B, N, **b), active=torch.zeros(T, B, N, **b),
            actions=torch.zeros(T, B, N, dtype=torch.long, device=device), log_prob=torch.zeros(T, B, N, **f32),
            values=torch.zeros(T, B, N, **f32), rewards=torch.zeros(T, B, N, **f32),
            terminated=torch.zeros(T, B, **b), truncated=torch.zeros(T, B, **b),
            stored={k: torch.zeros(T, *shape, dtype=dtype, device=device) for k, (shape, dtype) in storage.items()},
            final_values=torch.zeros(T, B, N, **f32), last_values=torch.zeros(B, N, **f32),
        )

    def next_values(self, denormalize: Callable[[Tensor], Tensor]) -> Tensor:
        """[T,B,N] raw: V(final_obs_t) where truncated_t, else V(obs_{t+1}) (V(obs_T) = last_values)."""
        raw = denormalize(self.values)
        nxt = torch.cat([raw[1:], self.last_values[None]], dim=0)
        return torch.where(self.truncated[..., None], self.final_values, nxt)


class Collector:
    """Steps a VecEnv with a policy and fills a Rollout; keeps the env's current Step and the policy's carry between
    rollouts."""

    def __init__(self, env: VecEnv, T: int, policy: Policy, device: torch.device,
                 generator: torch.Generator) -> None:
        self.env, self.T, self.device, self.generator = env, T, device, generator
        s = env.spec
        self.buf = Rollout.allocate(T, env.num_envs, s.n_agents, s.obs_dim, s.state_dim, s.n_actions,
                                    policy.storage(env.num_envs), device)
        self.current: Optional[Step] = None
        self.carry: Any = None  # the policy's per-env state at the current step
        self.finished: list[dict[str, Tensor]] = []  # episode stats of envs that finished, per step

    def reset(self, seed: int, policy: Policy) -> None:
        self.current = self.env.reset(seed=seed).to(self.device)
        self.carry = policy.initial_carry(self.env.num_envs)

    @torch.no_grad()
    def collect(self, policy: Policy, how: Any, denormalize: Callable[[Tensor], Tensor]) -> Rollout:
        """Fill the buffer with T steps acting as `how` (Policy.acting). Finished episodes' stats are appended to
        self.finished."""
        assert self.current is not None, "Collector.reset() first"
        buf, cur, g, carry = self.buf, self.current, self.generator, self.carry
        buf.final_values.zero_()
        plan = policy.plan_rollout(self.T, self.env.num_envs, how, g)
        planned = policy.planned_storage(plan)
        for k, v in planned.items():
            buf.stored[k].copy_(v)
        per_step = [k for k in buf.stored if k not in planned]
        # V(final_obs) of truncated envs: computed in one pass after the loop unless computing it draws from the
        # generator, which must then happen in step order
        deferred = not policy.value_draws(how)
        # (t, envs, obs, alive, stored, carry, state)
        finals: list[tuple[int, Tensor, Tensor, Tensor, dict[str, Tensor], Any, Tensor]] = []
        same_device = self.env.device == self.device
        for t in range(self.T):
            out = policy.act(cur.obs, cur.avail_actions, cur.alive, how, g, plan=plan, t=t, carry=carry,
                             **state_kwarg(policy, cur.state))
            buf.obs[t] = cur.obs
            buf.state[t] = cur.state
            buf.avail[t] = cur.avail_actions
            buf.alive[t] = cur.alive
            buf.active[t] = cur.active
            buf.actions[t] = out.actions
            buf.log_prob[t] = out.log_prob
            buf.values[t] = out.value
            for k in per_step:
                buf.stored[k][t] = out.stored[k]
            nxt = self.env.step(out.actions if same_device else out.actions.to(self.env.device))
            if not same_device:
                nxt = nxt.to(self.device)
            buf.rewards[t] = nxt.reward
            buf.terminated[t] = nxt.terminated
            buf.truncated[t] = nxt.truncated
            if bool(nxt.truncated.any()):  # the final observation under this step's decisions and carry
                if deferred:
                    idx = nxt.truncated.nonzero()[:, 0]
                    finals.append((t, idx, nxt.final_obs[idx], nxt.final_alive[idx],
                                   {k: v[idx] for k, v in out.stored.items()}, select(out.carry, idx),
                                   nxt.final_state[idx]))
                else:
                    v = policy.value(nxt.final_obs, nxt.final_alive, out.stored, out.carry, how, g, plan,
                                     **state_kwarg(policy, nxt.final_state))
                    buf.final_values[t] = torch.where(nxt.truncated[:, None], denormalize(v), 0.0)
            done = nxt.done
            if bool(done.any()):
                self.finished.append({k: v[done] for k, v in nxt.episode.items()})
            carry = policy.reset_carry(out.carry, done)
            cur = nxt
        self.current, self.carry = cur, carry
        last = policy.bootstrap_stored(cur.obs.shape[0], how, g)
        if not finals:
            buf.last_values = denormalize(policy.value(cur.obs, cur.alive, last, carry, how, g, plan,
                                                       **state_kwarg(policy, cur.state)))
            return buf
        # one pass over every truncated env's final observation and the last observation
        ts = torch.cat([torch.full_like(f[1], f[0]) for f in finals])
        idx = torch.cat([f[1] for f in finals])
        stored = {k: torch.cat([f[4][k] for f in finals] + [last[k]]) for k in last}
        v = denormalize(policy.value(torch.cat([f[2] for f in finals] + [cur.obs]),
                                     torch.cat([f[3] for f in finals] + [cur.alive]), stored,
                                     concat([f[5] for f in finals] + [carry]), how, g, plan,
                                     **state_kwarg(policy, torch.cat([f[6] for f in finals] + [cur.state]))))
        buf.final_values[ts, idx] = v[: idx.shape[0]]
        buf.last_values = v[idx.shape[0]:]
        return buf

    def pop_finished(self) -> dict[str, Tensor]:
        """Concatenated stats of the episodes finished since the last call (each [E] f32)."""
        if not self.finished:
            return {}
        keys = self.finished[0].keys()
        out = {k: torch.cat([f[k].float() for f in self.finished]) for k in keys}
        self.finished = []
        return out


def select(carry: Any, idx: Tensor) -> Any:
    """The carry of the envs `idx` (a tensor, or a dict of tensors, indexed on dim 0; None stays None)."""
    if carry is None:
        return None
    if isinstance(carry, dict):
        return {k: v[idx] for k, v in carry.items()}
    return carry[idx]


def concat(carries: list[Any]) -> Any:
    """The carries concatenated on dim 0 (None when they are None)."""
    if carries[0] is None:
        return None
    if isinstance(carries[0], dict):
        return {k: torch.cat([c[k] for c in carries]) for k in carries[0]}
    return torch.cat(carries)
