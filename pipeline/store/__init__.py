"""Store I/O shared by the stages: atomic writes, manifests, validation."""

from ._anndata import write_anndata_store
from ._atomic import (
    TMP_MARK,
    atomic_path,
    remove_staging_leftovers,
    scratch_folder,
    write_text_atomic,
)
from ._lazy import (
    CHUNK_BYTES,
    LazyCategorical,
    LazyColumn,
    LazyCSR,
    write_lazy_anndata_store,
    write_lazy_array,
    write_lazy_csr,
)
from ._lock import LockedError, read_holder, writer_lock
from ._manifest import (
    MANIFEST,
    arrays_of,
    describe_arrays,
    file_sha256,
    json_sha256,
    read_manifest,
    validate_store,
    write_manifest,
)
from ._rows import read_array_rows, read_rows
from ._update import obs_columns, update_anndata_store

__all__ = [
    "CHUNK_BYTES",
    "MANIFEST",
    "TMP_MARK",
    "LazyCSR",
    "LazyCategorical",
    "LazyColumn",
    "LockedError",
    "arrays_of",
    "atomic_path",
    "describe_arrays",
    "file_sha256",
    "json_sha256",
    "obs_columns",
    "read_array_rows",
    "read_holder",
    "read_manifest",
    "read_rows",
    "remove_staging_leftovers",
    "scratch_folder",
    "update_anndata_store",
    "validate_store",
    "write_anndata_store",
    "write_lazy_anndata_store",
    "write_lazy_array",
    "write_lazy_csr",
    "write_manifest",
    "write_text_atomic",
    "writer_lock",
]
