"""`llm-tuning chat` driven as a person would, in a pseudo-terminal (pexpect): type, read the streamed answer,
/reset, Ctrl-C during a long answer, another question, /exit."""

import os
import sys

import pytest

from conftest import ROOT
from serving import QUESTION, alone, trained_adapters

pexpect = pytest.importorskip("pexpect")
PROMPT = ">>> "


@pytest.fixture(scope="module")
def lora(tiny_models, tmp_path_factory):
    return trained_adapters(tiny_models, tmp_path_factory, ("lora",))["lora"]


def spawn(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = pexpect.spawn(sys.executable, ["-m", "llm_tuning", "chat", *args], cwd=ROOT, env=env,
                          encoding="utf-8", timeout=240, dimensions=(40, 200))
    child.expect_exact(PROMPT)
    return child


def say(child, line) -> str:
    """Type a line; the text printed before the next prompt (the echo of the line taken off)."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    out = child.before.replace("\r\n", "\n")
    assert out.startswith(line + "\n"), out
    return out[len(line) + 1:].rstrip("\n")


def test_conversation_keeps_history_and_reset_clears_it(tiny_models, lora):
    from llm_tuning.infer import generate, load_for_inference
    from llm_tuning.infer.sampling import Sampling
    from llm_tuning.infer.chat import printable

    child = spawn("--model", tiny_models["llama"], "--adapter", lora, "--max-new-tokens", "12")
    first = say(child, QUESTION)
    earlier = alone(tiny_models["llama"], lora, QUESTION, 12)
    assert first == printable(earlier) and "[stopped]" not in first
    second = say(child, "再说一种。")
    # The second answer continues the conversation: the adapter's answer to the record with that history.
    model, tok, _ = load_for_inference(tiny_models["llama"], lora)
    want = generate(model, tok, [{"instruction": "再说一种。", "input": "", "history": [[QUESTION, earlier]]}],
                    sampling=Sampling(12))[0]
    assert want != alone(tiny_models["llama"], lora, "再说一种。", 12)  # the history does change the answer
    assert second == printable(want)
    assert say(child, "/reset") == "(conversation cleared)"
    assert say(child, QUESTION) == first  # a fresh conversation again
    assert "unknown command" in say(child, "/nonsense")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_session(tiny_models, lora):
    child = spawn("--model", tiny_models["llama"], "--adapter", lora, "--max-new-tokens", "2000")
    child.sendline(QUESTION)
    child.expect_exact(QUESTION + "\r\n")
    child.expect(r"\S{8}")  # the answer is streaming
    child.sendintr()
    child.expect_exact(" [stopped]")
    child.expect_exact(PROMPT)
    # The session goes on: Ctrl-C at the prompt only reminds how to quit, and the next question is answered.
    child.sendintr()
    child.expect_exact("(type /exit to quit)")
    child.expect_exact(PROMPT)
    child.sendline("/reset")
    child.expect_exact(PROMPT)
    child.sendline(QUESTION)
    child.expect_exact(QUESTION + "\r\n")
    child.expect(r"\S{8}")
    child.sendintr()
    child.expect_exact(" [stopped]")
    child.expect_exact(PROMPT)
    child.sendeof()  # Ctrl-D quits too
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0



def test_history_that_outgrows_the_context_loses_its_oldest_exchanges(tiny_models):
    from llm_tuning.infer.chat import fit_history, prompt_ids_from_messages
    from llm_tuning.models import load_tokenizer

    tok = load_tokenizer(tiny_models["llama"])
    system = {"role": "system", "content": "你是一个助手。"}
    turns = [m for i in range(6) for m in ({"role": "user", "content": f"问题{i}：说出一种水果。"},
                                             {"role": "assistant", "content": f"回答{i}：苹果和香蕉。"})]
    messages = [system] + turns + [{"role": "user", "content": "最后一个问题。"}]
    whole = len(prompt_ids_from_messages(messages, "default", tok))
    kept, dropped = fit_history(messages, "default", tok, room=whole - 1)
    assert dropped == 1 and kept == [system] + turns[2:] + messages[-1:]
    kept, dropped = fit_history(messages, "default", tok, room=1)  # only the question itself is left
    assert dropped == 6 and kept == [system, messages[-1]]
    assert fit_history(messages, "default", tok, room=None) == (messages, 0)
