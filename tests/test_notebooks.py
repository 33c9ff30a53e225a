"""The notebooks run top to bottom on CPU with tiny parameters, so they cannot rot."""

import os

import nbformat
from nbclient import NotebookClient

from helpers import CHECKOUT, SMALL_MOBILENET, write_fake_cifar, write_fake_fmnist

NOTEBOOKS = os.path.join(CHECKOUT, "experiments", "notebooks")


def _execute(name: str, overrides: dict, cwd: str, monkeypatch) -> nbformat.NotebookNode:
    """Runs a notebook with ``overrides`` placed after its parameters cell (papermill's convention)."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    # The kernel imports this checkout's awn_jax.
    monkeypatch.setenv("PYTHONPATH", CHECKOUT, prepend=os.pathsep)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    return nb


def _output_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_notebooks_are_committed_without_outputs():
    for name in os.listdir(NOTEBOOKS):
        nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        stale = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not stale, f"{name}: cells {stale} keep outputs; clear them before committing"


def test_quickstart_trains_sweeps_and_picks_a_width(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_fake_fmnist(raw, n_train=256, n_test=64)
    nb = _execute("quickstart.ipynb", {
        "NUM_EPOCHS": 1, "RAW_DIR": str(raw), "DATA_DIR": str(tmp_path / "tfds"),
        "WORKDIR": str(tmp_path / "wd"), "THROUGHPUT_REPEATS": 0, "BUDGET_MACS": 3e6,
    }, str(tmp_path), monkeypatch)
    text = _output_text(nb)
    assert "AUC" in text and "MMACs per image, top-1" in text and "max |widened - direct|" in text
    assert os.path.exists(tmp_path / "wd" / "eval" / "sweep.json")


def test_tpu_notebook_runs_the_data_parallel_mobilenet_on_cpu(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_fake_cifar(str(archive), "cifar10", n_per_batch=8)
    nb = _execute("tpu_mobilenetv2.ipynb", {
        "NUM_EPOCHS": 1, "BATCH_SIZE": 8, "RAW": str(archive), "DATA_DIR": str(tmp_path / "tfds"),
        "WORKDIR": str(tmp_path / "wd"), "MOUNT_DRIVE": False, "SWEEP_GRID": 0.65, "THROUGHPUT_REPEATS": 0,
        # The same code on fewer, narrower blocks: its programs compile in half the time.
        "BLOCK_SETTINGS": SMALL_MOBILENET.block_settings,
        # The sweep's widths at this grid (with the reference's): training then compiles the
        # evaluation program that the sweep reuses, instead of a second one.
        "EVAL_WIDTHS": (0.25, 1 / 3, 0.41666666666666663, 0.5, 0.5833333333333333, 2 / 3, 0.75,
                        0.8333333333333333, 0.9, 0.9166666666666666, 1.0),
    }, str(tmp_path), monkeypatch)
    assert "mobilenet_v2/AWN on cifar10" in _output_text(nb)


def test_import_modules_notebook_trains_a_custom_model(tmp_path, monkeypatch):
    nb = _execute("import_modules.ipynb", {"TRAIN_STEPS": 30, "BATCH": 32}, str(tmp_path), monkeypatch)
    text = _output_text(nb)
    assert "widened == direct: True" in text
    assert "prefix invariant: True" in text
    assert "NNX step at width 0.25: loss" in text and "NNX logits at 0.5: (2, 10)" in text
