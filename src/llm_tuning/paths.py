def looks_like_local_path(name: str) -> bool:
    """True when `name` is meant as a local path rather than a hub id such as `owner/name`.

    Used to give "no such file" instead of a confusing hub error for a mistyped path.
    """
    if name.startswith((".", "/", "~")) or name.endswith((".json", ".jsonl", ".yaml", ".yml")):
        return True
    return name.count("/") > 1


def project_root() -> str:
    """The source checkout's root (src/llm_tuning/paths.py -> the folder holding src/)."""
    import os

    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def is_committed_example(path: str) -> bool:
    """True for a folder under the checkout's examples/ that already holds a report (compare.json): a committed
    reference, which a run must not rewrite unless the user names it as the output on purpose."""
    import os

    examples = os.path.realpath(os.path.join(project_root(), "examples"))
    real = os.path.realpath(path)
    return real.startswith(examples + os.sep) and os.path.isfile(os.path.join(real, "compare.json"))
