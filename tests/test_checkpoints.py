"""Checkpoints on disk: one directory per step with a checksummed record, verified before use.
Each damage a user met (flipped bytes, a truncated file, a mixed pair, a corrupt record, a full
disk) is refused or passed over for the previous checkpoint, never loaded silently."""

import errno
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl.experiment as fx
from flowrl.experiment import _checkpoints

CONFIG = {"lr": 0.5, "hidden": (8, 8)}


def state_at(step):
    """A small state whose arrays and own step counter differ from step to step."""
    return {
        "w": jnp.arange(256.0) + step,
        "key": jax.random.key(step),
        "step": jnp.asarray(step, jnp.int32),
    }


LIKE = state_at(0)


def save(tmp_path, *steps, keep=2):
    for s in steps:
        fx.save_checkpoint(tmp_path, state_at(s), CONFIG, s, keep=keep)
    return tmp_path


def state_file(tmp_path, step):
    return tmp_path / f"step_{step:08d}" / "state.eqx"


def assert_loads_step(tmp_path, step):
    state, got = fx.load_checkpoint(tmp_path, LIKE, CONFIG)
    assert got == step
    np.testing.assert_array_equal(state["w"], state_at(step)["w"])
    np.testing.assert_array_equal(
        jax.random.key_data(state["key"]), jax.random.key_data(state_at(step)["key"])
    )


def no_temporary_files(tmp_path):
    return not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_each_checkpoint_is_a_directory_with_a_checksummed_record(tmp_path):
    path = fx.save_checkpoint(tmp_path, state_at(10), CONFIG, 10)
    assert path == tmp_path / "step_00000010"
    assert sorted(p.name for p in path.iterdir()) == ["record.json", "state.eqx"]
    record = json.loads((path / "record.json").read_text())
    assert record["step"] == 10 and record["config"] == {"lr": 0.5, "hidden": [8, 8]}
    assert record["bytes"] == (path / "state.eqx").stat().st_size
    assert record["sha256"] == _checkpoints._sha256(path / "state.eqx")
    assert fx.latest_checkpoint(tmp_path) == (path, 10)
    assert_loads_step(tmp_path, 10)
    assert no_temporary_files(tmp_path)


def test_the_newest_keep_checkpoints_are_kept(tmp_path):
    save(tmp_path, 10, 20, 30, 40, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000020",
        "step_00000030",
        "step_00000040",
    ]
    save(tmp_path, 50, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000050"]
    assert_loads_step(tmp_path, 50)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        fx.save_checkpoint(tmp_path, state_at(60), CONFIG, 60, keep=0)


def test_a_resumed_run_drops_the_checkpoints_it_passed_over(tmp_path):
    """After resuming from step 20 (say 30 was damaged), saving step 25 removes step 30:
    its run was abandoned, and it must not be taken for the newest checkpoint."""
    save(tmp_path, 20, 30)
    save(tmp_path, 25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000020", "step_00000025"]


def test_saving_a_step_again_replaces_it(tmp_path):
    save(tmp_path, 10, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000010"]
    assert_loads_step(tmp_path, 10)


def test_flipped_bytes_fall_back_to_the_previous_checkpoint_with_a_warning(tmp_path):
    save(tmp_path, 10, 20)
    damaged = state_file(tmp_path, 20)
    data = bytearray(damaged.read_bytes())
    data[-100:-36] = bytes(64)  # 64 bytes of the weights overwritten
    damaged.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"{damaged} does not match the sha256"):
        assert fx.latest_checkpoint(tmp_path) == (tmp_path / "step_00000010", 10)
    with pytest.warns(UserWarning, match="sha256"):
        assert_loads_step(tmp_path, 10)


def test_a_truncated_file_falls_back_to_the_previous_checkpoint(tmp_path):
    save(tmp_path, 10, 20)
    damaged = state_file(tmp_path, 20)
    damaged.write_bytes(damaged.read_bytes()[:-500])
    with pytest.warns(UserWarning, match=f"{damaged} has .* bytes, its record says"):
        assert_loads_step(tmp_path, 10)


def test_a_mixed_pair_is_refused(tmp_path):
    """The arrays of one step beside the record of another, however they got there."""
    save(tmp_path, 10, 20, 30, keep=3)
    shutil.copy(state_file(tmp_path, 30), state_file(tmp_path, 20))  # arrays 30, record 20
    shutil.copy(tmp_path / "step_00000030" / "record.json", tmp_path / "step_00000010")
    shutil.rmtree(tmp_path / "step_00000030")
    with pytest.warns(UserWarning), pytest.raises(fx.CheckpointError) as e:
        fx.latest_checkpoint(tmp_path)
    message = str(e.value)
    assert f"{state_file(tmp_path, 20)} does not match the sha256" in message
    assert f"{tmp_path / 'step_00000010' / 'record.json'} is the record of step 30" in message


def test_a_record_with_a_forged_checksum_is_caught_by_the_states_own_step(tmp_path):
    """Arrays of step 30 and a record of step 20 that matches them (only the state's own step
    counter can tell)."""
    save(tmp_path, 30)
    (tmp_path / "step_00000030").rename(tmp_path / "step_00000020")
    record_file = tmp_path / "step_00000020" / "record.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "step": 20}))
    with pytest.raises(fx.CheckpointError, match=r"holds a state at step 30, its record says 20"):
        fx.load_checkpoint(tmp_path, LIKE, CONFIG)


def test_a_corrupt_record_names_its_file_and_falls_back(tmp_path):
    save(tmp_path, 10, 20)
    corrupt = tmp_path / "step_00000020" / "record.json"
    corrupt.write_text('{"step": 20, "config": ')
    with pytest.warns(UserWarning, match=f"{corrupt} is not valid JSON"):
        assert_loads_step(tmp_path, 10)
    (tmp_path / "step_00000010" / "record.json").write_text("[]")
    with pytest.warns(UserWarning), pytest.raises(fx.CheckpointError) as e:
        fx.load_checkpoint(tmp_path, LIKE, CONFIG)
    assert f"no usable checkpoint in {tmp_path}" in str(e.value)
    assert str(corrupt) in str(e.value) and "step_00000010/record.json lacks" in str(e.value)


def test_a_corrupt_run_record_names_its_file(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'} is not valid JSON"):
        fx.read_run(tmp_path)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(fx.CheckpointError, match=f"no checkpoint in {tmp_path}$"):
        fx.latest_checkpoint(tmp_path)
    (tmp_path / "checkpoint.eqx").write_bytes(b"")
    with pytest.raises(fx.CheckpointError, match="older flowrl's layout"):
        fx.load_checkpoint(tmp_path, LIKE, CONFIG)


def test_a_state_saved_under_another_step_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"the state's step is 7, saving it as step 8"):
        fx.save_checkpoint(tmp_path, state_at(7), CONFIG, 8)
    assert no_temporary_files(tmp_path)


def failing_writer(monkeypatch, error, after=3):
    """Make the state's writer raise `error` after a few writes."""
    write = _checkpoints._HashingWriter.write
    calls = []

    def failing(self, data):
        calls.append(1)
        if len(calls) > after:
            raise error
        return write(self, data)

    monkeypatch.setattr(_checkpoints._HashingWriter, "write", failing)


def test_a_full_disk_is_named_and_leaves_the_previous_checkpoint_and_no_temporary_file(
    tmp_path, monkeypatch
):
    save(tmp_path, 10)
    failing_writer(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError) as e:
        fx.save_checkpoint(tmp_path, state_at(20), CONFIG, 20)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == (
        f"[Errno 28] no space left on device writing checkpoint {tmp_path / 'step_00000020'} "
        f"(free some space and resume; the previous checkpoint {tmp_path / 'step_00000010'} "
        "is intact)"
    )
    assert no_temporary_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000010"]
    assert_loads_step(tmp_path, 10)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.EIO, "I/O error")])
def test_no_temporary_file_is_left_after_any_failure(tmp_path, monkeypatch, error):
    save(tmp_path, 10)
    failing_writer(monkeypatch, error)
    with pytest.raises(type(error)) as e:
        fx.save_checkpoint(tmp_path, state_at(20), CONFIG, 20)
    if isinstance(error, OSError):
        assert str(e.value) == (
            f"[Errno 5] I/O error writing checkpoint {tmp_path / 'step_00000020'} (the previous "
            f"checkpoint {tmp_path / 'step_00000010'} is intact)"
        )
    assert no_temporary_files(tmp_path)
    assert_loads_step(tmp_path, 10)


def test_a_failure_while_saving_a_step_again_keeps_the_old_copy(tmp_path, monkeypatch):
    save(tmp_path, 10)
    rename = Path.rename

    def failing(self, target):  # the new copy cannot be moved into place
        if self.name == ".step_00000010.tmp":
            raise OSError(errno.EIO, "I/O error")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="I/O error writing checkpoint .*step_00000010"):
        fx.save_checkpoint(tmp_path, state_at(10), CONFIG, 10)
    assert no_temporary_files(tmp_path)
    assert_loads_step(tmp_path, 10)


def test_a_killed_save_leaves_a_temporary_directory_that_is_ignored_then_removed(tmp_path):
    save(tmp_path, 10)
    killed = tmp_path / ".step_00000020.tmp"  # what SIGKILL during a save leaves
    killed.mkdir()
    (killed / "state.eqx").write_bytes(b"partial")
    assert fx.latest_checkpoint(tmp_path) == (tmp_path / "step_00000010", 10)
    save(tmp_path, 20)
    assert no_temporary_files(tmp_path)
    assert_loads_step(tmp_path, 20)


def test_a_checkpoint_from_before_a_config_field_existed_loads_and_other_changes_are_refused(
    tmp_path,
):
    """A run saved before the config class grew a field (the online phase's flags) resumes;
    a field it did save still has to match, and a field removed since is still named."""
    save(tmp_path, 3)
    state, step = fx.load_checkpoint(tmp_path, LIKE, {**CONFIG, "utd": 1})
    assert step == 3
    with pytest.raises(fx.CheckpointError, match=r"lr: saved 0\.5 vs now 0\.1"):
        fx.load_checkpoint(tmp_path, LIKE, {**CONFIG, "lr": 0.1, "utd": 1})
    with pytest.raises(fx.CheckpointError, match=r"hidden: saved \[8, 8\] vs now None"):
        fx.load_checkpoint(tmp_path, LIKE, {"lr": 0.5})
