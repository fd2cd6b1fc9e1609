"""Checkpoints: a resume restores identical parameters, optimiser and normaliser state, RNG and counters; bad files give
one-line CheckpointErrors; files are weights-only loadable and written atomically."""
import dataclasses

import pytest
import torch
from core_utils import make_config, state_equal

from commformer.training.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from commformer.training.trainer import Trainer


@pytest.fixture
def trained(tmp_path):
    """A gated, learned-graph run on the signal game: 2 iterations, checkpoint at the end."""
    cfg = make_config(tmp_path / "run", iterations=2, algo={"gate": True})
    tr = Trainer(cfg, cfg.run_dir)
    tr.train()
    return tr


def test_round_trip_restores_everything(trained):
    path = trained.run_dir / "checkpoints" / "last.pt"
    assert path.is_file()
    resumed = Trainer(dataclasses.replace(trained.cfg, resume=str(path)), trained.run_dir)
    try:
        assert resumed.iteration == trained.iteration == 2
        assert resumed.env_steps == trained.env_steps == 32
        assert state_equal(resumed.policy.state_dict(), trained.policy.state_dict())
        assert state_equal(resumed.opt.state_dict(), trained.opt.state_dict())
        assert len(trained.opt.network.state) > 0 and trained.opt.graph is not None
        assert len(trained.opt.graph.state) > 0  # Adam moments exist and came back
        assert state_equal(resumed.vnorm.state_dict(), trained.vnorm.state_dict())
        assert torch.equal(resumed.generator.get_state(), trained.generator.get_state())
        assert state_equal(resumed.env.state_dict(), trained.env.state_dict())
        assert torch.equal(resumed.collector.current.obs, trained.collector.current.obs)
    finally:
        resumed.logger.close()
        resumed.close()


def test_resume_from_run_folder(trained):
    resumed = Trainer(dataclasses.replace(trained.cfg, resume=str(trained.run_dir)), trained.run_dir)
    try:
        assert resumed.iteration == 2
        assert state_equal(resumed.policy.state_dict(), trained.policy.state_dict())
    finally:
        resumed.logger.close()
        resumed.close()


def test_checkpoint_is_weights_only_loadable(trained):
    state = torch.load(trained.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == FORMAT
    assert state["iteration"] == 2 and state["env_steps"] == 32
    assert isinstance(state["config"], str) and "graph: learned" in state["config"]
    assert "graph.alpha" in state["policy"] and "model.head_w" in state["policy"]
    for key in ("policy", "optimisers", "value_norm", "rng", "env", "current_step"):
        assert state[key] is not None, key
    assert not list((trained.run_dir / "checkpoints").glob("*.tmp")), "temp files left behind"


def one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    one_line_error(path, "cannot be read")


def test_truncated_checkpoint(trained, tmp_path):
    data = (trained.run_dir / "checkpoints" / "last.pt").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    one_line_error(path, "cannot be read")


def test_torch_file_without_format_tag(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    message = one_line_error(path, "not a commformer checkpoint")
    assert FORMAT in message and "None" in message
    path2 = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path2)
    assert "Tensor" in one_line_error(path2, "not a commformer checkpoint")


class NotWeights:
    pass


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"format": FORMAT, "object": NotWeights()}, path)
    one_line_error(path, "cannot be read")


def test_missing_path(tmp_path):
    one_line_error(tmp_path / "nope.pt", "no such checkpoint")


def test_trainer_resume_with_bad_file_raises(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_text("garbage")
    cfg = make_config(tmp_path / "run", resume=str(path))
    with pytest.raises(CheckpointError):
        Trainer(cfg, tmp_path / "run")


def test_save_is_atomic_and_tagged(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "x.pt", {"iteration": 3, "w": torch.ones(2)})
    assert path == tmp_path / "sub" / "x.pt"
    state = load_checkpoint(path)
    assert state["format"] == FORMAT and state["iteration"] == 3 and torch.equal(state["w"], torch.ones(2))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.pt"]
    with pytest.raises(Exception):  # an unpicklable value: the old file stays, no temp file remains
        save_checkpoint(path, {"iteration": 4, "f": lambda: 0})
    assert load_checkpoint(path)["iteration"] == 3
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.pt"]
