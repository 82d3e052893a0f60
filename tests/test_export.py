"""Lesson 08's two files: the export format, its reader, the NumPy runner and the C runner.

The models are small and random (built here from a GPTConfig, weights drawn with a large
spread so that the next token is rarely a near tie), one per architecture: GPT-2's (learned
positions, LayerNorm, GELU, biases, tied embeddings) and the newer one (rotary positions,
RMSNorm, SwiGLU, no biases, untied). Generation runs 200 tokens past a 32-token block, so the
KV-cache window slides several times. The reference past the block is ``window_reference``, a
loop that calls ``GPT.forward`` on the windows the policy names; within the block it is
``GPT.generate`` itself.
"""

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from minillm import artifacts
from minillm import export as ex
from minillm import numpy_runner as nr
from minillm.chat import prompt_ids
from minillm.checkpoint import save_checkpoint
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
RUN_C = ROOT / "minillm" / "run.c"
GPT2 = {}
NEWER = {"positions": "rotary", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
         "tie_embeddings": False}
ARCHITECTURES = [pytest.param(GPT2, id="learned-layernorm-gelu"),
                 pytest.param(NEWER, id="rotary-rmsnorm-swiglu")]
PROMPT = "ROMEO: speak"


@pytest.fixture(scope="module")
def tok():
    return artifacts.char_tokenizer()


def random_model(vocab_size, seed=0, block_size=32, **switches) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2,
                          n_embd=32, **switches)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@torch.no_grad()
def window_reference(model: GPT, ids: list[int], n: int) -> list[int]:
    """Greedy tokens under the window policy, each step a plain forward over its window."""
    bs = model.config.block_size
    slide, ids, new = max(1, bs // 4), list(ids), []
    s = max(0, len(ids) - bs)
    for _ in range(n):
        if new and len(ids) - s > bs:
            s = len(ids) - (bs - slide)
        token = int(model(torch.tensor([ids[s:]]))[0][0, -1].argmax())
        ids.append(token)
        new.append(token)
    return new


def exported(tmp_path, model, tok, dtype="fp32", name="model.bin") -> Path:
    return ex.export(model, tmp_path / name, dtype, tokenizer=tok)


# ---- the format and the reader -----------------------------------------------------------

@pytest.mark.parametrize("switches", ARCHITECTURES)
def test_fp32_file_read_back_gives_bit_identical_logits(tmp_path, tok, switches):
    model = random_model(tok.vocab_size, **switches)
    back = ex.read_export(exported(tmp_path, model, tok))
    ids = torch.tensor([tok.encode("ROMEO: O, speak again, bright angel!")[:32]])
    with torch.no_grad():
        assert torch.equal(back.to_gpt()(ids)[0], model(ids)[0])
    assert back.config() == model.config
    assert back.tokenizer().encode(PROMPT) == tok.encode(PROMPT)
    assert back.tokenizer().special_tokens == tok.special_tokens


@pytest.mark.parametrize("switch", [{"bias": False}, {"positions": "rotary"},
                                    {"norm": "rmsnorm"}, {"mlp": "swiglu"},
                                    {"tie_embeddings": False}])
def test_every_architecture_switch_exports(tmp_path, tok, switch):
    model = random_model(tok.vocab_size, seed=1, **switch)
    back = ex.read_export(exported(tmp_path, model, tok))
    ids = tok.encode(PROMPT)
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0][0]
        assert torch.equal(back.to_gpt()(torch.tensor([ids]))[0][0], want)
    assert np.allclose(nr.forward(back, ids), want.numpy(), atol=1e-4)


def test_a_checkpoint_file_exports_with_its_tokenizer(tmp_path, tok):
    model = random_model(tok.vocab_size, seed=2)
    save_checkpoint(tmp_path / "policy.pt", model, tok, stage="dpo")
    back = ex.read_export(ex.export(tmp_path / "policy.pt", tmp_path / "policy.bin"))
    assert back.tokenizer().chars == tok.chars
    assert sorted(back.special) == sorted(tok.special_tokens.values())


def test_a_bpe_model_exports_its_token_table(tmp_path, corpus):
    bpe = Tokenizer.train(corpus[:20_000], 300, special_tokens=artifacts.SPECIAL_TOKENS)
    model = random_model(bpe.vocab_size, seed=3, **NEWER)
    back = ex.read_export(exported(tmp_path, model, bpe))
    text = "First Citizen: speak, speak."
    assert back.tokenizer().encode(text) == bpe.encode(text)
    assert back.header["tokenizer"] == ex.TOKENIZERS["bpe"]


def test_header_is_52_little_endian_bytes(tok):
    h = ex.header_of(GPTConfig(vocab_size=69, block_size=128, n_layer=4, n_head=4, n_embd=128,
                               bias=False), tok, "int8")
    packed = ex.pack_header(h)
    assert len(packed) == ex.HEADER_SIZE == 52
    assert packed[:8] == b"MLLM\x01\x00\x00\x00"
    assert struct.unpack("<11I", packed[8:]) == (69, 128, 4, 4, 128, 512, 16, 2, 1, 69, 4)
    assert ex.unpack_header(packed) == h


def test_a_reward_model_checkpoint_gets_one_sentence(tmp_path, tok):
    class WithHead(GPT):  # a reward model's shape: a GPT and a head on top
        def __init__(self, config):
            super().__init__(config)
            self.head = nn.Linear(config.n_embd, 1)

    save_checkpoint(tmp_path / "rm.pt", WithHead(random_model(tok.vocab_size).config), tok,
                    stage="reward")
    with pytest.raises(ValueError, match=r"is a reward model: .* export a language model"):
        ex.export(tmp_path / "rm.pt", tmp_path / "rm.bin")
    with pytest.raises(ValueError, match="dtype must be one of"):
        ex.export(random_model(tok.vocab_size), tmp_path / "x.bin", "int4", tokenizer=tok)


def damaged_files(tmp_path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a damaged copy of ``good``, what the one-sentence error must say)."""
    data = good.read_bytes()
    files = {"truncated": (data[:len(data) // 2], "is truncated"),
             "cut in the header": (data[:30], "is truncated"),
             "foreign": (b"PK\x03\x04" + data[4:], "is not a minillm export"),
             "empty": (b"", "is not a minillm export"),
             "from the future": (data[:4] + struct.pack("<I", 2) + data[8:], "version 2"),
             "overlong": (data + b"\x00" * 8, "longer than its header says")}
    out = {}
    for k, (name, (content, message)) in enumerate(files.items()):
        path = tmp_path / f"damaged{k}.bin"
        path.write_bytes(content)
        out[name] = (path, message)
    return out


def test_bad_files_are_one_sentence_from_python(tmp_path, tok):
    good = exported(tmp_path, random_model(tok.vocab_size), tok)
    for name, (path, message) in damaged_files(tmp_path, good).items():
        with pytest.raises(ex.ExportError) as raised:
            ex.read_export(path)
        assert message in str(raised.value), name
        assert str(raised.value).count(". ") == 0 and "\n" not in str(raised.value), name
    with pytest.raises(ValueError, match="'9' is not in this character-level vocabulary"):
        ex.encode_prompt(ex.read_export(good), "Speak of 9.")


def test_a_damaged_header_field_is_one_sentence_from_python_and_c(tmp_path, tok):
    good = exported(tmp_path, random_model(tok.vocab_size), tok).read_bytes()
    compiler = shutil.which("cc") or shutil.which("gcc")
    binary = tmp_path / "run"
    if compiler:
        subprocess.run([compiler, "-O2", "-o", str(binary), str(RUN_C), "-lm"], check=True)
    for k, field in enumerate(ex.HEADER_FIELDS):
        for value in (0, 7, 2**32 - 1):
            path = tmp_path / f"{field}-{value}.bin"
            path.write_bytes(good[:8 + 4 * k] + struct.pack("<I", value) + good[12 + 4 * k:])
            if struct.pack("<I", value) == good[8 + 4 * k:12 + 4 * k]:
                continue  # the value it already had
            with pytest.raises(ex.ExportError) as raised:
                ex.read_export(path)
            assert "\n" not in str(raised.value), (field, value)
            if compiler:
                finished = run(binary, path, "-n", "3", "-t", "0")
                assert finished.returncode == 1, (field, value, finished)
                assert len(finished.stderr.strip().splitlines()) == 1, (field, value, finished)
                assert finished.stderr.startswith("error: "), (field, value, finished)


# ---- int8 and fp16 ------------------------------------------------------------------------

def test_int8_rows_round_to_within_half_a_step():
    w = np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32)
    w[3] = 0.0  # an all-zero row must not divide by zero
    q, scales = ex.quantize_int8(w)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.allclose(scales, np.abs(w).max(1) / 127)
    err = np.abs(ex.dequantize_int8(q, scales) - w)
    assert (err <= scales[:, None] / 2 + 1e-7).all()
    assert (ex.dequantize_int8(q, scales)[3] == 0).all()


@pytest.mark.parametrize("switches", ARCHITECTURES)
def test_fp16_and_int8_files_are_smaller_and_close(tmp_path, tok, switches):
    model = random_model(tok.vocab_size, **switches)
    sizes, logits = {}, {}
    ids = tok.encode(PROMPT)
    for dtype in ex.DTYPES:
        back = ex.read_export(exported(tmp_path, model, tok, dtype, f"{dtype}.bin"))
        sizes[dtype], logits[dtype] = back.size, nr.forward(back, ids)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    assert sizes["fp32"] - sizes["fp16"] == 2 * matrices
    assert sizes["fp16"] - sizes["int8"] < matrices
    spread = logits["fp32"].std()
    assert np.abs(logits["fp16"] - logits["fp32"]).max() < 0.01 * spread
    assert np.abs(logits["int8"] - logits["fp32"]).max() < 0.2 * spread


# ---- the NumPy runner ---------------------------------------------------------------------

@pytest.mark.parametrize("switches", ARCHITECTURES)
def test_numpy_forward_agrees_with_gpt_forward(tmp_path, tok, switches):
    model = random_model(tok.vocab_size, **switches)
    back = ex.read_export(exported(tmp_path, model, tok))
    ids = tok.encode("ROMEO: O, speak again, bright angel!")[:32]
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(nr.forward(back, ids) - want).max() < 1e-4
    # the KV cache: the same logits fed one token at a time
    cache = nr.new_cache(back)
    stepwise = np.stack([nr.forward(back, [t], cache, k)[0] for k, t in enumerate(ids)])
    assert np.abs(stepwise - want).max() < 1e-4


@pytest.mark.parametrize("switches", ARCHITECTURES)
def test_numpy_greedy_equals_torch_within_and_past_the_block(tmp_path, tok, switches):
    model = random_model(tok.vocab_size, **switches)
    back = ex.read_export(exported(tmp_path, model, tok))
    ids = tok.encode(PROMPT)
    within = model.generate(torch.tensor([ids]), 32 - len(ids), temperature=0)[0, len(ids):]
    assert nr.generate(back, ids, 32 - len(ids)) == within.tolist()
    assert nr.generate(back, ids, 200) == window_reference(model, ids, 200)
    long_prompt = tok.encode("ROMEO: " * 8)  # longer than the block: cropped to its end
    assert nr.generate(back, long_prompt, 50) == window_reference(model, long_prompt, 50)


def test_numpy_sampling_is_seeded_and_filtered(tmp_path, tok):
    back = ex.read_export(exported(tmp_path, random_model(tok.vocab_size), tok))
    ids = tok.encode(PROMPT)
    a = nr.generate(back, ids, 40, temperature=1.0, top_k=5, top_p=0.9, seed=1)
    assert a == nr.generate(back, ids, 40, temperature=1.0, top_k=5, top_p=0.9, seed=1)
    assert nr.generate(back, ids, 40, temperature=1.0, top_k=1, seed=2) == nr.generate(back,
                                                                                       ids, 40)
    assert nr.generate(back, ids, 40, temperature=1.0, top_p=1e-6, seed=3) == nr.generate(
        back, ids, 40)


# ---- the C runner -------------------------------------------------------------------------

def test_run_c_is_under_500_lines_and_ships_with_the_package():
    assert len(RUN_C.read_text().splitlines()) < 500
    assert '"run.c"' in (ROOT / "pyproject.toml").read_text()


@pytest.fixture(scope="module")
def runner(tmp_path_factory, compile_c) -> Path:
    return compile_c(RUN_C, tmp_path_factory.mktemp("c") / "run")


def run(runner, model_file, *args, stdin=None, text=True) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), str(model_file), *args], input=stdin, capture_output=True,
                          text=text, timeout=60)


def ids_of(finished: subprocess.CompletedProcess) -> list[int]:
    assert finished.returncode == 0, finished.stderr
    return [int(t) for t in finished.stdout.split()]


@pytest.mark.parametrize("switches", ARCHITECTURES)
def test_c_greedy_equals_torch_within_and_past_the_block(tmp_path, tok, runner, switches):
    model = random_model(tok.vocab_size, **switches)
    file = exported(tmp_path, model, tok)
    ids = tok.encode(PROMPT)
    within = model.generate(torch.tensor([ids]), 32 - len(ids), temperature=0)[0, len(ids):]
    assert ids_of(run(runner, file, "-p", PROMPT, "-n", str(32 - len(ids)), "-t", "0",
                      "-I")) == within.tolist()
    assert ids_of(run(runner, file, "-p", PROMPT, "-n", "200", "-t", "0", "-I")) == \
        window_reference(model, ids, 200)


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_c_greedy_equals_numpy_on_quantized_files(tmp_path, tok, runner, dtype):
    file = exported(tmp_path, random_model(tok.vocab_size, **NEWER), tok, dtype)
    back = ex.read_export(file)
    ids = tok.encode(PROMPT)
    assert ids_of(run(runner, file, "-i", ",".join(map(str, ids)), "-n", "200", "-t", "0",
                      "-I")) == nr.generate(back, ids, 200)


def test_c_prints_text_and_samples_reproducibly(tmp_path, tok, runner):
    model = random_model(tok.vocab_size)
    file = exported(tmp_path, model, tok)
    greedy = run(runner, file, "-p", PROMPT, "-n", "30", "-t", "0")
    assert greedy.returncode == 0 and re.search(r"30 tokens in .* tokens/s", greedy.stderr)
    want = tok.decode(window_reference(model, tok.encode(PROMPT), 30))
    assert greedy.stdout == PROMPT + want + "\n"
    sampled = [run(runner, file, "-n", "50", "-t", "1.0", "-k", "10", "-P", "0.9", "-s", str(s),
                   "-I") for s in (1, 1, 2)]
    a, b, c = (ids_of(s) for s in sampled)
    assert a == b != c and all(0 <= t < tok.vocab_size for t in a)
    assert ids_of(run(runner, file, "-n", "40", "-t", "1", "-k", "1", "-s", "5", "-I")) == \
        ids_of(run(runner, file, "-n", "40", "-t", "0", "-I"))


@pytest.mark.parametrize("pull", [0.5, 0.6])
def test_c_chat_uses_the_template_and_stops_at_end_of_turn(tmp_path, tok, runner, pull):
    model = random_model(tok.vocab_size, seed=4, block_size=64, tie_embeddings=False)
    end = tok.special_tokens["<|end|>"]
    with torch.no_grad():  # 0.6 pulls this random model to end its turn early; 0.5 does not
        model.lm_head.weight[end] = pull * model.norm_f.bias
    back_path = exported(tmp_path, model, tok)
    back = ex.read_export(back_path)
    messages = ["Speak of love.", "Speak of war, my lord.", "O"]
    stops = set(tok.special_tokens.values())
    finished = run(runner, back_path, "-c", "-t", "0", "-n", "20", "-I",
                   stdin="\n".join(messages) + "\n")
    assert finished.returncode == 0, finished.stderr
    lines = [line.removeprefix("model> ") for line in finished.stdout.splitlines()]
    for line, message in zip(lines, messages, strict=True):
        want = nr.generate(back, prompt_ids([{"role": "user", "content": message}], tok), 20,
                           stop=stops)
        ended = want[-1] == end
        answer = want[:-1] if want[-1] in stops else want
        assert line.split("[")[0].split() == [str(t) for t in answer]
        assert line.endswith("[no end of turn]") != ended


def test_c_reads_a_bpe_model_by_ids_and_refuses_its_text(tmp_path, corpus, runner):
    bpe = Tokenizer.train(corpus[:20_000], 300, special_tokens=artifacts.SPECIAL_TOKENS)
    model = random_model(bpe.vocab_size, seed=5, **NEWER)
    file = exported(tmp_path, model, bpe)
    ids = bpe.encode("First Citizen:")
    finished = run(runner, file, "-i", ",".join(map(str, ids)), "-n", "40", "-t", "0",
                   text=False)  # a random model's bytes need not be valid UTF-8
    want = window_reference(model, ids, 40)
    assert finished.stdout == bpe.decode_bytes(ids + want) + b"\n"
    refused = run(runner, file, "-p", "First Citizen:")
    assert refused.returncode == 1 and "give the prompt's ids with -i" in refused.stderr


def test_bad_input_is_one_sentence_from_c(tmp_path, tok, runner):
    good = exported(tmp_path, random_model(tok.vocab_size), tok)
    cases = {name: case for name, case in damaged_files(tmp_path, good).items()}
    cases["missing"] = (tmp_path / "nowhere.bin", "cannot open")
    for name, (path, message) in cases.items():
        finished = run(runner, path, "-n", "5")
        assert finished.returncode == 1, (name, finished)  # an error, not a crash (signal)
        lines = finished.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], name
    finished = run(runner, good, "-p", "Speak of 9.")
    assert finished.returncode == 1
    assert finished.stderr.strip() == ("error: the character '9' is not in this model's "
                                       "vocabulary.")
    chat = run(runner, good, "-c", "-t", "0", "-n", "5", stdin="Speak of 9.\nSpeak.\n")
    assert chat.returncode == 0 and "'9' is not in this model's vocabulary" in chat.stderr
    assert chat.stdout.count("model> ") == 1  # the bad line is skipped, the next one answered


# ---- the command line ---------------------------------------------------------------------

def test_export_command_writes_the_file_and_says_how_to_run_it(tmp_path, tok):
    save_checkpoint(tmp_path / "base.pt", random_model(tok.vocab_size), tok)
    out = tmp_path / "base-int8.bin"
    finished = subprocess.run([sys.executable, "-m", "minillm", "export", str(tmp_path / "base.pt"),
                               str(out), "--dtype", "int8"], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "parameters in int8" in finished.stdout and "run.c" in finished.stdout
    assert ex.read_export(out).dtype == "int8"
    bad = subprocess.run([sys.executable, "-m", "minillm", "export", str(tmp_path / "nope.pt"),
                          str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: No checkpoint at")


def test_a_model_without_tokenizer_runs_from_ids(tmp_path, tok, runner):
    model = random_model(tok.vocab_size, seed=6)
    file = ex.export(model, tmp_path / "bare.bin")
    back = ex.read_export(file)
    assert back.tokenizer() is None and back.header["n_tokens"] == 0
    ids = [5, 6, 7]
    assert ids_of(run(runner, file, "-i", "5,6,7", "-n", "50", "-t", "0", "-I")) == \
        window_reference(model, ids, 50) == nr.generate(back, ids, 50)
    refused = run(runner, file, "-p", "ROMEO:")
    assert refused.returncode == 1 and "has no tokenizer" in refused.stderr
    with pytest.raises(ValueError, match="holds no tokenizer"):
        ex.encode_prompt(back, "ROMEO:")


# ---- tools: calculator calls answered by the runners (lesson 10) --------------------------

def test_the_numpy_runner_needs_no_pytorch():
    finished = subprocess.run([sys.executable, "-c", "import sys, minillm.numpy_runner; "
                               "print(sorted(m for m in sys.modules if m.startswith('torch')))"],
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0 and finished.stdout.strip() == "[]", finished


def scripted_model(prompt: list[int], script: list[int], vocab_size: int) -> GPT:
    """A GPT that writes ``script`` after ``prompt`` whatever it reads: each position's embedding
    is one-hot and every other weight is zero, so the last norm sees only the position, and the
    output layer maps position p to the token ``prompt + script`` has at p + 1."""
    full = prompt + script
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=128, n_layer=1, n_head=2,
                          n_embd=128, tie_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if re.search(r"norm.*weight", name) else 0.0)
        model.pos_emb.weight.copy_(torch.eye(128))
        for position, token in enumerate(full[1:]):
            model.lm_head.weight[token, position] = 1.0
    return model


@pytest.mark.parametrize("max_new", [200, 20, 5])
def test_the_runners_answer_calls_as_respond_does(tmp_path, runner, max_new):
    """A close without an open, a malformed call and a good one, each answered with the result
    ``respond`` forces in (the model itself would write "?" there), in C, in NumPy and in
    ``sample_answers``, token for token; a short budget cuts a result (20) or leaves a call
    unanswered (5), alike in all three."""
    from minillm.chat import sample_answers
    from minillm.tools import CALL, CALL_END, TOOL_CHARS, TOOL_TOKENS, tool_result

    tok = artifacts.char_tokenizer().with_tokens(TOOL_CHARS, TOOL_TOKENS)
    message = "How many are 2 and 3?"
    calls = [CALL_END, f"{CALL}37+{CALL_END}", f"So {CALL}2*(3+4){CALL_END}"]
    results = [tool_result(""), tool_result("37+"), tool_result("2*(3+4)")]
    written = "".join(c + "?" * len(r) for c, r in zip(calls, results)) + "Ok.<|end|>"
    prompt = prompt_ids([{"role": "user", "content": message}], tok)
    model = scripted_model(prompt, tok.encode(written, allowed_special="all"), tok.vocab_size)
    _, [want] = sample_answers(model, tok, [message], max_new, temperature=0)
    if max_new == 200:
        assert tok.decode(want) == "".join(c + r for c, r in zip(calls, results)) + "Ok.<|end|>"
    file = exported(tmp_path, model, tok)
    stops = set(tok.special_tokens.values()) - set(tok.special_tokens[t] for t in TOOL_TOKENS)
    assert nr.generate(ex.read_export(file), prompt, max_new, stop=stops) == want
    finished = run(runner, file, "-c", "-t", "0", "-n", str(max_new), "-I", stdin=message + "\n")
    assert finished.returncode == 0, finished.stderr
    line = finished.stdout.removeprefix("model> ")
    ended = want[-1] == tok.special_tokens["<|end|>"]
    assert line.split("[")[0].split() == [str(t) for t in (want[:-1] if ended else want)]
    assert line.rstrip().endswith("[no end of turn]") != ended
    if max_new == 200:  # as text, the results are printed where they go
        text = run(runner, file, "-c", "-t", "0", "-n", "200", stdin=message + "\n").stdout
        assert text == "model> " + tok.decode(want[:-1]) + "\n"


@pytest.mark.slow
def test_lesson_10s_tool_assistant_answers_alike_in_c_numpy_and_respond(tmp_path, runner):
    """Lesson 10's tool assistant (made first if missing; in CI the lessons, which run before the
    tests, have made it): its greedy answers to held-out sums of each size and to a 4-digit one,
    calls and results included, are the same tokens from ``respond``, NumPy and C."""
    from minillm.arithmetic import question
    from minillm.chat import sample_answers
    from minillm.tools import CALL_END, TOOL_TOKENS

    checkpoint = artifacts.tools_model("tool")
    model, tok = checkpoint.model.cpu().eval(), checkpoint.tokenizer
    held_out = artifacts.arithmetic_data("tool").questions
    sums = [q for d in (1, 2, 3) for q in [q for q in held_out if q["digits"] == d][:2]]
    messages = [q["prompt"] for q in sums + [question(1234, 5678)]]
    _, want = sample_answers(model, tok, messages, 40, temperature=0)
    assert all(tok.special_tokens[CALL_END] in answer for answer in want[:-1])  # the tool is used
    file = exported(tmp_path, model, tok)
    back = ex.read_export(file)
    stops = set(tok.special_tokens.values()) - set(tok.special_tokens[t] for t in TOOL_TOKENS)
    prompts = [prompt_ids([{"role": "user", "content": m}], tok) for m in messages]
    assert [nr.generate(back, p, 40, stop=stops) for p in prompts] == want
    finished = run(runner, file, "-c", "-t", "0", "-n", "40", "-I",
                   stdin="\n".join(messages) + "\n")
    assert finished.returncode == 0, finished.stderr
    lines = [line.removeprefix("model> ") for line in finished.stdout.splitlines()]
    end = tok.special_tokens["<|end|>"]
    assert [line.split("[")[0].split() for line in lines] == \
        [[str(t) for t in (a[:-1] if a[-1] == end else a)] for a in want]
