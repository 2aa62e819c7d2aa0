def looks_like_local_path(name: str) -> bool:
    """True when `name` is meant as a local path rather than a hub id such as `owner/name`.

    Used to give "no such file" instead of a confusing hub error for a mistyped path.
    """
    if name.startswith((".", "/", "~")) or name.endswith((".json", ".jsonl", ".yaml", ".yml")):
        return True
    return name.count("/") > 1
