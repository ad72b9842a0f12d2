"""scVI on the HVG counts: train on a subsample, encode cells chunk by chunk (no I/O but
the model directory).

Training runs in the driver on a stratified subsample; encoding runs in Dask tasks, each
loading the saved model once per worker process and encoding one block of cells, so the
full matrix is never in one process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ImmunoprofileError

BATCH = "_scvi_batch"
_MODELS: dict[tuple[str, float], Any] = {}  # per worker process: model dir, mtime -> model


@dataclass(frozen=True)
class ScviTraining:
    model_dir: Path
    n_cells: int
    n_epochs: int
    history: dict[str, list[float]]  # per epoch: training ELBO (and validation if any)


@dataclass(frozen=True)
class SavedModel:
    """A saved scVI model folder and the SHA-256 of each of its files when the integrate
    stage wrote it. scvi-tools loads a model with ``torch.load(weights_only=False)``: a
    file put in its place could run code. `check` refuses anything else before loading."""

    path: Path
    sha256: dict[str, str]

    @classmethod
    def of(cls, path: Path) -> SavedModel:
        """The model at ``path`` as it is now (call right after saving it)."""
        return cls(path, _hashes(path))

    def to_record(self) -> dict[str, str]:
        return dict(self.sha256)

    @classmethod
    def from_record(cls, path: Path, record: dict[str, str] | None) -> SavedModel:
        if not record:
            msg = (
                f"the scVI model at {path} has no recorded file hashes (written by an "
                "earlier version, or the record is lost): it is not loaded, since loading "
                "a model runs the code in it; re-run the integrate stage to train it again"
            )
            raise ModelFileError(msg)
        return cls(path, {str(k): str(v) for k, v in record.items()})

    def check(self) -> None:
        """Raise `ModelFileError` unless the folder holds exactly the recorded files."""
        found = _hashes(self.path) if self.path.is_dir() else {}
        if found != self.sha256:
            changed = sorted(
                f for f in set(found) | set(self.sha256) if found.get(f) != self.sha256.get(f)
            )
            msg = (
                f"the scVI model at {self.path} is not the one the integrate stage wrote "
                f"(file(s) {', '.join(changed)} differ from the SHA-256 recorded in "
                "cohort.zarr's uns/integrate): it is not loaded, since loading a model runs "
                "the code in it; re-run the integrate stage to train it again"
            )
            raise ModelFileError(msg)


class ModelFileError(ImmunoprofileError):
    """A saved model's files are not those recorded when it was written."""


SCVI_EXTRA = "pip install 'immunoprofile[scvi]'"


def require_scvi(asked_by: str) -> None:
    """Fail with a clear message when scvi-tools or torch, the optional ``scvi`` extra, is
    not installed; ``asked_by`` names the setting that asks for scVI."""
    missing = [name for name in ("scvi", "torch") if importlib.util.find_spec(name) is None]
    if missing:
        packages = " and ".join("scvi-tools" if m == "scvi" else m for m in missing)
        msg = (
            f"{asked_by} asks for scVI, but {packages} {'is' if len(missing) == 1 else 'are'} "
            f"not installed: scVI is an optional extra ({SCVI_EXTRA}; torch's CPU build "
            "first, see README), or set integrate.method: harmony"
        )
        raise ImmunoprofileError(msg)


def _hashes(path: Path) -> dict[str, str]:
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        out[f.relative_to(path).as_posix()] = digest.hexdigest()
    return out


def _quiet() -> None:
    import scvi

    scvi.settings.verbosity = logging.WARNING
    for name in ("scvi", "lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", module="scvi")


def _adata(counts: sp.csr_matrix, batch: np.ndarray, categories: list[str]) -> ad.AnnData:
    obs = pd.DataFrame(
        {BATCH: pd.Categorical(np.asarray(batch).astype(str), categories=categories)}
    )
    obs.index = obs.index.astype(str)
    return ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=obs)


def train_scvi(
    counts: sp.csr_matrix,
    batch: np.ndarray,
    model_dir: Path,
    *,
    n_latent: int = 10,
    n_layers: int = 1,
    n_hidden: int = 128,
    max_epochs: int = 100,
    batch_size: int = 128,
    seed: int = 0,
    n_threads: int = 0,
    kl_warmup_epochs: int = 400,
) -> ScviTraining:
    """Train scVI on raw HVG counts (cells x HVGs) with ``batch`` as the batch covariate;
    save it to ``model_dir`` (replaced atomically by the caller's directory rename)."""
    require_scvi("train_scvi")
    import scvi
    import torch

    _quiet()
    if n_threads:
        torch.set_num_threads(n_threads)
    scvi.settings.seed = seed
    categories = sorted(set(np.asarray(batch).astype(str)))
    adata = _adata(counts, batch, categories)
    scvi.model.SCVI.setup_anndata(adata, batch_key=BATCH)
    model = scvi.model.SCVI(adata, n_latent=n_latent, n_layers=n_layers, n_hidden=n_hidden)
    model.train(
        max_epochs=max_epochs,
        batch_size=batch_size,
        plan_kwargs={"n_epochs_kl_warmup": kl_warmup_epochs},
        accelerator="cpu",
        devices=1,
        train_size=1.0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model.save(str(model_dir), overwrite=True, save_anndata=False)
    history = {
        k: [float(v) for v in df.iloc[:, 0]]
        for k, df in model.history.items()
        if k.startswith(("elbo", "reconstruction"))
    }
    return ScviTraining(
        model_dir=model_dir, n_cells=adata.n_obs, n_epochs=max_epochs, history=history
    )


def _load(model_dir: Path, template: ad.AnnData) -> Any:
    import scvi
    import torch

    key = (str(model_dir), model_dir.joinpath("model.pt").stat().st_mtime)
    if key not in _MODELS:
        _quiet()
        torch.set_num_threads(1)  # one Dask worker thread, one torch thread
        _MODELS.clear()
        _MODELS[key] = scvi.model.SCVI.load(str(model_dir), adata=template, accelerator="cpu")
    return _MODELS[key]


def encode_scvi(counts: sp.csr_matrix, batch: np.ndarray, saved: SavedModel) -> np.ndarray:
    """The latent means (cells x n_latent, float32) of raw HVG counts under the saved model
    (its files checked against their recorded hashes before anything of it is loaded).

    Cells of a batch the model was not trained on (add-batch) are encoded as they are:
    the encoder does not take the batch as input (scvi-tools' ``encode_covariates``
    False, as `train_scvi` builds it), so their latent means do not depend on the label;
    the batch is only the decoder's. A model whose encoder takes it is refused for them.
    """
    import scvi

    saved.check()
    model_dir = saved.path
    _quiet()
    registry = scvi.model.SCVI.load_registry(str(model_dir))
    categories = list(
        registry["field_registries"]["batch"]["state_registry"]["categorical_mapping"]
    )
    labels = np.asarray(batch).astype(str)
    known = np.isin(labels, categories)
    if not known.all():
        model = _load(model_dir, _adata(counts[:1], np.array(categories[:1]), categories))
        if model.module.encode_covariates:
            new = sorted(set(labels[~known]))
            msg = (
                f"batches {new} are not in the scVI model at {model_dir}, whose encoder "
                "takes the batch: re-integrate with them (add-batch --refit)"
            )
            raise ValueError(msg)
        labels = np.where(known, labels, categories[0])
    adata = _adata(counts, labels, categories)
    model = _load(model_dir, adata)
    latent = model.get_latent_representation(adata=adata, batch_size=4096)
    return np.asarray(latent, dtype=np.float32)
