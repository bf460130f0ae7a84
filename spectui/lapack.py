"""The few LAPACK and BLAS routines the eigen-solvers need, called without holding the GIL.

SciPy's own wrappers (`scipy.linalg.lapack`) keep the GIL for the whole call, so scan workers on
threads would take turns. SciPy also exports every routine
as a C function pointer for Cython (`scipy.linalg.cython_lapack`, a public API, the route numba
takes); ctypes calls those with the GIL released. Arrays are column-major float64, as LAPACK wants.

Some routines are not among those exports: the two stages of LAPACK 3.7's two-stage eigen-solver
(`dsytrd_sy2sb`: dense to band, `dsytrd_sb2st`: band to tridiagonal), whose band reduction runs on
BLAS 3 where `dsytrd` spends half its time streaming the matrix through
matrix-vector products. They are looked up in the library behind those exports, spelt as that
library spells dsytrd; where it lacks them, `dsytrd` does both reductions.
"""

from __future__ import annotations

import ctypes
from functools import cache
from itertools import product

import numpy as np

_p = ctypes.POINTER
_int, _double, _char = _p(ctypes.c_int), _p(ctypes.c_double), ctypes.c_char_p
_SIGNATURES = {  # argument types, in the order of the Fortran routines
    "dsyrk": (_char, _char, _int, _int, _double, _double, _int, _double, _double, _int),
    "dsytrd": (_char, _int, _double, _int, _double, _double, _double, _double, _int, _int),
    "dsterf": (_int, _double, _double, _int),
    "dormqr": (_char, _char, _int, _int, _int, _double, _int, _double, _double, _int, _double, _int, _int),
    "dsyevd": (_char, _char, _int, _double, _int, _double, _double, _int, _int, _int, _int),
    "dgbtrf": (_int, _int, _int, _int, _double, _int, _int, _int),
    "dgbtrs": (_char, _int, _int, _int, _int, _double, _int, _int, _double, _int, _int),
}


_SIBLINGS = {  # the same, for routines looked up beside SciPy's (`_sibling`)
    "dsytrd_sy2sb": (_char, _int, _int, _double, _int, _double, _int, _double, _double, _int, _int),
    "dsytrd_sb2st": (_char, _char, _char, _int, _int, _double, _int, _double, _double, _double, _int, _double,
                     _int, _int),
}


@cache
def _routine(name: str):
    if name in _SIBLINGS:
        return _sibling(name)
    from scipy.linalg import cython_blas, cython_lapack

    capsule = (cython_blas if name == "dsyrk" else cython_lapack).__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    declared = get_name(capsule)
    if _parse(declared.decode()) != _SIGNATURES[name]:  # a SciPy built otherwise (64-bit integers, say)
        raise RuntimeError(f"SciPy's {name} is declared as {declared.decode()!r}, not as spectui expects")
    return ctypes.CFUNCTYPE(None, *_SIGNATURES[name])(get_pointer(capsule, declared))  # releases the GIL


def _sibling(name: str):
    """`name` from the LAPACK that SciPy's Cython exports call, spelt as that library spells dsytrd
    (`scipy_dsytrd_`, `dsytrd_`): the dynamic linker looks it up through SciPy's module, which links
    that library. 32-bit integers only, as `_routine` checked of dsytrd; the character arguments'
    hidden lengths follow the declared ones (`_call`). KeyError where absent."""
    from scipy.linalg import cython_lapack

    try:
        library = ctypes.CDLL(cython_lapack.__file__)
    except OSError as error:
        raise KeyError(name) from error
    spelling = next(((p, s) for p, s in product(("scipy_", ""), ("_", "")) if hasattr(library, f"{p}dsytrd{s}")), None)
    address = None if spelling is None else getattr(library, name.join(spelling), None)
    if address is None:
        raise KeyError(name)
    hidden = (ctypes.c_size_t,) * _SIBLINGS[name].count(_char)
    return ctypes.CFUNCTYPE(None, *_SIBLINGS[name], *hidden)(ctypes.cast(address, ctypes.c_void_p).value)


@cache
def two_stage() -> bool:
    """Whether the two-stage solver's two stages are at hand (`band_reduce`, `band_tridiagonal`)."""
    try:
        return usable() and all(_routine(name) for name in _SIBLINGS)
    except KeyError:
        return False


@cache
def usable() -> bool:
    """Whether SciPy's routines can be called as declared here; where not, the solvers fall back on
    torch's, which give the same results, more slowly."""
    try:
        for name in _SIGNATURES:
            _routine(name)
    except (ImportError, KeyError, RuntimeError):  # no SciPy, a routine missing, declared otherwise
        return False
    return True


def _parse(declaration: str) -> tuple:
    """The ctypes argument types of a Cython C declaration such as 'void (char *, int *, …_d *)'."""
    kinds = {"char *": _char, "int *": _int}
    arguments = declaration.removeprefix("void (").removesuffix(")").split(", ")
    return tuple(_double if a.endswith("_d *") else kinds.get(a) for a in arguments)


def _i(value: int):
    return ctypes.byref(ctypes.c_int(value))


def _d(array: np.ndarray):
    return array.ctypes.data_as(_double)


def _call(name: str, *args) -> None:
    info = ctypes.c_int(0)
    # a Fortran routine called by its symbol takes each character argument's length last (gfortran's
    # convention; a C-translated LAPACK ignores them); SciPy's exports pass them themselves
    lengths = (1,) * _SIBLINGS[name].count(_char) if name in _SIBLINGS else ()
    _routine(name)(*args, ctypes.byref(info), *lengths)
    if info.value != 0:
        raise np.linalg.LinAlgError(f"LAPACK {name} failed (info={info.value})")


def gram_lower(w: np.ndarray, chunk: int = 512, minus: np.ndarray | None = None) -> np.ndarray:
    """The smaller of W Wᵀ and Wᵀ W for a row-major W of any float dtype (numpy, or a torch tensor
    where numpy has no such type: bfloat16), lower triangle only
    (BLAS dsyrk: half the work of a product), column-major. W is converted to float64 a slab of
    `chunk` rows (or columns) at a time and the slabs' Grams summed, so a float32 W is never held
    twice in float64. With `minus`, the Gram of W − minus, which is never formed whole either."""
    m, n = w.shape
    size = min(m, n)
    out = np.zeros((size, size), order="F")
    one = ctypes.byref(ctypes.c_double(1.0))
    # a slab stored row-major as rows × columns is the column-major columns × rows matrix A: a slab
    # of rows adds A Aᵀ to Wᵀ W ("N"), a slab of columns Aᵀ A to W Wᵀ ("T"), neither transposed here
    wide = m <= n
    for start in range(0, max(m, n), chunk):
        cut = np.s_[:, start: start + chunk] if wide else np.s_[start: start + chunk]
        slab = _float64(w[cut])
        if minus is not None:
            slab -= _float64(minus[cut])
        depth = slab.shape[1] if wide else slab.shape[0]
        _routine("dsyrk")(b"L", b"T" if wide else b"N", _i(size), _i(depth), one, _d(slab), _i(slab.shape[1]), one,
                          _d(out), _i(size))
    return out


def _float64(block) -> np.ndarray:
    """A C-ordered float64 copy of a numpy array, or of a torch tensor of a type numpy lacks (through
    float32, which holds it exactly: torch's own conversion to float64 took 5× longer)."""
    if isinstance(block, np.ndarray):
        return np.array(block, dtype=np.float64, order="C")
    return block.float().numpy().astype(np.float64, order="C")


def syevd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenvalues (ascending) and eigenvectors of a symmetric matrix given by its lower
    triangle; `a` (column-major) is overwritten with the eigenvectors."""
    n = a.shape[0]
    lam = np.empty(n)
    work, iwork = np.empty(1 + 6 * n + 2 * n * n), np.empty(3 + 5 * n, dtype=np.int32)
    _call("dsyevd", b"V", b"L", _i(n), _d(a), _i(n), _d(lam), _d(work), _i(work.size),
          iwork.ctypes.data_as(_int), _i(iwork.size))
    return lam, a


def sytrd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce a symmetric matrix (lower triangle, column-major, overwritten by the reflectors) to
    tridiagonal form: returns its diagonal, off-diagonal and the reflectors' scalars."""
    n = a.shape[0]
    d, e, tau = np.empty(n), np.empty(max(n - 1, 1)), np.empty(max(n - 1, 1))
    _with_workspace("dsytrd", b"L", _i(n), _d(a), _i(n), _d(d), _d(e), _d(tau))
    return d, e[: n - 1], tau[: n - 1]


def sterf(d: np.ndarray, e: np.ndarray) -> np.ndarray:
    """All eigenvalues (ascending) of a symmetric tridiagonal matrix."""
    lam, off = d.copy(), np.append(e, 0.0)  # dsterf overwrites both
    _call("dsterf", _i(len(d)), _d(lam), _d(off))
    return lam


def band_reduce(a: np.ndarray, kd: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a symmetric matrix (lower triangle, column-major, overwritten by the reflectors) to a
    band of half-width kd (the two-stage solver's first stage, on BLAS 3): returns the band in LAPACK's
    lower band storage ((kd+1) × n, row r holding the r-th subdiagonal) and the reflectors' scalars,
    whose reflectors sit below the kd-th subdiagonal of `a`."""
    n = a.shape[0]
    band, tau = np.zeros((kd + 1, n), order="F"), np.zeros(max(n - kd, 1))
    _with_workspace("dsytrd_sy2sb", b"L", _i(n), _i(kd), _d(a), _i(n), _d(band), _i(kd + 1), _d(tau))
    return band, tau[: n - kd]


def band_tridiagonal(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The diagonal and off-diagonal of a tridiagonal matrix similar to a symmetric band matrix (lower
    band storage, left as it is): the two-stage solver's second stage, without its reflectors."""
    kd, n = band.shape[0] - 1, band.shape[1]
    ab = np.array(band, order="F")
    d, e = np.empty(n), np.empty(max(n - 1, 1))
    hous, work = np.zeros(1), np.zeros(1)
    args = (b"N", b"N", b"L", _i(n), _i(kd), _d(ab), _i(kd + 1), _d(d), _d(e))
    _call("dsytrd_sb2st", *args, _d(hous), _i(-1), _d(work), _i(-1))  # asks for both workspaces
    hous, work = np.empty(max(1, int(hous[0]))), np.empty(max(1, int(work[0])))
    _call("dsytrd_sb2st", *args, _d(hous), _i(hous.size), _d(work), _i(work.size))
    return d, e[: n - 1]


def band_lu(general: np.ndarray, half_width: int) -> np.ndarray:
    """LU with partial pivoting of a square band matrix in LAPACK's general band storage
    ((3 half_width + 1) × n, the matrix from row half_width on; overwritten by the factors); returns
    the pivots. An exactly singular U is left for the caller to see on its diagonal (row 2 half_width)."""
    n = general.shape[1]
    pivots, info = np.zeros(n, dtype=np.int32), ctypes.c_int(0)
    _routine("dgbtrf")(_i(n), _i(n), _i(half_width), _i(half_width), _d(general), _i(general.shape[0]),
                       pivots.ctypes.data_as(_int), ctypes.byref(info))
    if info.value < 0:
        raise np.linalg.LinAlgError(f"LAPACK dgbtrf failed (info={info.value})")
    return pivots


def band_solve(general: np.ndarray, half_width: int, pivots: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Solve with `band_lu`'s factors for the columns of x (column-major, overwritten)."""
    n, columns = x.shape
    _call("dgbtrs", b"N", _i(n), _i(half_width), _i(half_width), _i(columns), _d(general), _i(general.shape[0]),
          pivots.ctypes.data_as(_int), _d(x), _i(n))
    return x


def apply_reflectors(a: np.ndarray, tau: np.ndarray, c: np.ndarray, transpose: bool = False) -> np.ndarray:
    """Q c (or Qᵀ c) for the Q = H(1)…H(k) whose reflectors sit below the diagonal of `a`
    (column-major, as QR factorisations and dsytrd leave them); `c` (column-major) is overwritten."""
    rows, cols = c.shape
    _with_workspace("dormqr", b"L", b"T" if transpose else b"N", _i(rows), _i(cols), _i(len(tau)), _d(a),
                    _i(a.strides[1] // 8), _d(tau), _d(c), _i(rows))
    return c


def _with_workspace(name: str, *args) -> None:
    """Call a routine that takes (work, lwork) last with the workspace it asks for (lwork = -1).
    Given less than its blocked algorithm needs, LAPACK quietly falls back to the unblocked one:
    dormqr did so here with a guessed size (bench/README.md)."""
    size = np.zeros(1)
    _call(name, *args, _d(size), _i(-1))
    work = np.empty(max(1, int(size[0])))
    _call(name, *args, _d(work), _i(work.size))
