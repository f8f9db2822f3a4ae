"""The reference training application, kept apart from the kernel library (`import itr_kernels`
needs torch and numpy only): the training loop (`train`), its configs (`config`), checkpoints, the
data sets and RSC relevance (`data`), the VSE model (`vse`) and the LeaPRR re-ranker (`rerank`).

Its packages are the `train` extra: `pip install 'itr_kernels[train]'`, or in a checkout
`pip install -r requirements-train.txt torch==<the installed torch>` (`make train` does this).
Entry points: `python train.py` or `itr-train`, and `python -m itr_kernels.app.rerank` or
`itr-rerank`."""
import importlib.util

INSTALL = "pip install 'itr_kernels[train]' (in a checkout: pip install -r requirements-train.txt torch==<your torch>)"


def require(*modules: str) -> None:
    """Raise an ImportError that names the `train` extra if any of `modules` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"the itr_kernels training application needs {', '.join(missing)}, part of the "
                          f"`train` extra: {INSTALL}")


def _run(module: str, modules: tuple) -> None:
    import sys
    try:
        require(*modules)
    except ImportError as e:
        sys.exit(f"error: {e}")
    importlib.import_module(module).main()


def train_main() -> None:
    """The `itr-train` command (`python train.py`)."""
    _run("itr_kernels.app.train", ("yaml", "tqdm", "matplotlib"))


def rerank_main() -> None:
    """The `itr-rerank` command (`python -m itr_kernels.app.rerank`)."""
    _run("itr_kernels.app.rerank", ("yaml",))
