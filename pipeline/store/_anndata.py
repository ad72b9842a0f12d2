"""Write an AnnData as a zarr v3 store, atomically, with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import zarr
from zarr.codecs import BloscCodec

from ._atomic import atomic_path
from ._manifest import write_manifest

# Raw counts: LZ4 with byte shuffling decodes int32 CSR arrays ~6x faster than zarr's
# default zstd at the same size, and every stage after ingest reads the counts
# (docs/benchmarks.md).
COUNTS_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def write_anndata_store(
    target: Path,
    adata: ad.AnnData,
    info: dict[str, Any],
    *,
    x_chunk: int | None = None,
    lz4: bool = False,
) -> dict[str, Any]:
    """Write ``adata`` to ``target`` (zarr format 3) under a temporary name, add the
    manifest (``info`` plus every array's checksum), then rename it into place.

    Everything but X keeps anndata's default chunks; X's 1-D arrays (CSR data/indices)
    get chunks of ``x_chunk`` values when given. (A large chunk on a small string array
    would make every read decode the whole chunk.) With ``lz4``, X's arrays use
    `COUNTS_CODEC` instead of zarr's default zstd.
    """
    with atomic_path(target) as tmp:
        with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            rest = adata
            x = adata.X
            if x is not None:
                rest = ad.AnnData(
                    obs=adata.obs, var=adata.var, obsm=adata.obsm, varm=adata.varm,
                    obsp=adata.obsp, uns=adata.uns, layers=adata.layers,
                )  # fmt: skip
            ad.io.write_elem(group, "/", rest)
            if x is not None:
                kwargs: dict[str, Any] = {"chunks": (x_chunk,)} if x_chunk else {}
                if lz4:
                    kwargs["compressors"] = [COUNTS_CODEC]
                ad.io.write_elem(group, "X", x, dataset_kwargs=kwargs)
        manifest = write_manifest(tmp, info)
    return manifest
