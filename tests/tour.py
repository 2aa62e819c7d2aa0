"""The README's tour as a list of commands, read from the README itself, and a driver that replays them.

`tour_commands()` parses the tour's bash block (the `for m in ...` loop expanded, $DATA substituted, comments
dropped) and the Python block; `with_small_budget()` gives the slow ones a small budget (2 training steps, a few
records, short answers). The lines that are templates (`...`) and `serve` (a server that runs until stopped;
tests/test_serve.py covers it) are left out.

Run as a script (`python tests/tour.py COMMANDS.json`), it replays the commands in the current folder, each
through `llm_tuning.cli.main` (the entry point of the `llm-tuning` script) in this one process: one Python and
torch start-up instead of ~20 (each ~5-10 s on 2 busy cores). It prints one line per command and exits 1 at the
first that does not exit 0.
"""

import json
import os
import re
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SKIPPED = ("serve",)  # runs until stopped


def _block(text: str, after: str, lang: str) -> str:
    start = text.index(f"```{lang}\n", text.index(after)) + len(f"```{lang}\n")
    return text[start:text.index("```", start)]


def _bash_commands(block: str) -> list[list[str]]:
    """The block's `llm-tuning` command lines as argument lists (variables and the one for-loop expanded)."""
    variables, commands, loop = {}, [], None
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words or "..." in words:
            continue
        words = [re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), w) for w in words]
        if len(words) == 1 and re.fullmatch(r"\w+=\S+", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = value
        elif words[:1] == ["for"]:  # for m in a b c; do
            loop = (words[1], [w.rstrip(";") for w in words[3:words.index("do")]], [])
        elif words == ["done"]:
            name, values, body = loop
            commands += [[w.replace(f"${name}", v) for w in cmd] for v in values for cmd in body]
            loop = None
        elif words[0] == "llm-tuning" and words[1] not in SKIPPED:
            (loop[2] if loop else commands).append(words[1:])
    return commands


def tour_commands() -> tuple[list[list[str]], str]:
    """(the tour's CLI commands, the Python block that follows it) as the README gives them."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return _bash_commands(_block(text, "## A tour", "bash")), _block(text, "The same steps from Python",
                                                                                "python")


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv
    return argv + [flag, value]


def with_small_budget(argv: list[str]) -> list[str]:
    """The command with a small budget: what it does is unchanged, only how long it does it."""
    command = argv[0]
    if command == "train":
        return _set(argv, "--max-steps", "2")
    if command == "eval":
        return _set(_set(argv, "--limit", "4"), "--max-new-tokens", "8")
    if command in ("generate", "chat"):
        return _set(argv, "--max-new-tokens", "8")
    if command == "quantlab":
        return _set(_set(_set(argv, "--records", "4"), "--max-rows", "256"), "--thresholds", "0,6")
    return argv


def small_python(code: str) -> str:
    return code.replace("max_steps=30", "max_steps=2")


def replay(commands: list[list[str]], python: str) -> int:
    # The `llm-tuning` process keeps bitsandbytes out when it will not quantise (models.load.skip_bitsandbytes);
    # in one process for every command the quantised run must still find it: import it first.
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    from llm_tuning.cli import main

    for argv in commands:
        t = time.time()
        print("$ llm-tuning " + shlex.join(argv), flush=True)
        code = main(argv)
        print(f"[tour] exit code {code} in {time.time() - t:.1f} s", flush=True)
        if code != 0:
            return 1
    t = time.time()
    print("$ python (the README's Python block)", flush=True)
    exec(compile(python, "README.md", "exec"), {"__name__": "__tour__"})
    print(f"[tour] done in {time.time() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        todo = json.load(f)
    sys.exit(replay(todo["commands"], todo["python"]))
