r"""
Our lm-eval adapter gives the numbers lm-eval's own Hugging Face model (`HFLM`) gives on the same weights.

A tiny random GPT-NeoX is built in transformers, its weights copied into our modules, and a tiny byte-level
BPE tokenizer is trained here on a few sentences. Both models then answer the same lm-eval requests: LAMBADA
through `simple_evaluate` and our local task (a synthetic file always; the first documents of the real file
when `../shared/data/lambada_test.jsonl` is present), rolling log-likelihoods of long documents, and
generation with stop sequences. The model's context is short (64 tokens) so that truncation and rolling
windows happen often.
"""

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's HFLM imports it

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from helpers import make_tiny_hf_model, our_model_from_hf, shared_file  # noqa: E402
from labml_nn.neox.evaluation import EvalHarnessAdapter  # noqa: E402
from labml_nn.neox.evaluation.tasks import LAMBADA_TASK, offline, task_manager, write_local_tasks  # noqa: E402

# Per-request log-likelihoods of the two implementations agree to this (fp32; they differ by ~1e-5)
TOLERANCE = 1e-3
N_CTX = 64
REAL_LAMBADA = shared_file("lambada_test.jsonl")
WORDS = ("the of and to in is it that was he for on are with as his they at be this from have or by one had not "
         "but what all were when we there can an your which their said if do will each about how up out them then "
         "she many some so these would other into has more her two like him see time could no make than first "
         "been its who now people my made over did down only way find use may water long little very after words "
         "called just where most know").split()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models are tiny: one thread is as fast as two, and much faster when other processes share the CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def tokenizers_(tmp_path_factory):
    r"""
    A byte-level BPE tokenizer like GPT-NeoX's (id 0 `<|endoftext|>`, id 1 `<|padding|>`), 300 ids, and the
    same file wrapped for transformers.
    """
    rng = random.Random(0)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([words(rng, 30) + "." for _ in range(200)], trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>",
                                                        bos_token="<|endoftext|>", pad_token="<|padding|>")
    return tokenizer, hf_tokenizer


@pytest.fixture(scope="module")
def models_(tokenizers_):
    """A random transformers GPT-NeoX and our modules holding the same weights."""
    tokenizer, _ = tokenizers_
    hf = make_tiny_hf_model(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=N_CTX, scale=0.2)
    return hf, our_model_from_hf(hf)


@pytest.fixture(scope="module")
def lms(models_, tokenizers_):
    hf, ours = models_
    tokenizer, hf_tokenizer = tokenizers_
    reference = HFLM(pretrained=hf, tokenizer=hf_tokenizer, batch_size=4)
    return EvalHarnessAdapter(ours, tokenizer, batch_size=4, progress=False), reference


def synthetic_lambada(path: Path, hf, tokenizer, n_docs: int = 24) -> Path:
    r"""
    LAMBADA-like documents whose last word is, for half of them, the reference model's greedy next token (a
    single token `" word"`), and a random word for the others, so that accuracy is neither 0 nor 1 and the
    greedy flags are tested both ways. A few documents are longer than the context.
    """
    rng = random.Random(1)
    contexts = [words(rng, rng.choice([10, 20, 30, 80])) for _ in range(20 * n_docs)]
    # The reference model's next token after each context, in one right-padded batch
    ids = [tokenizer.encode(c).ids[-N_CTX:] for c in contexts]
    batch = torch.tensor([x + [0] * (N_CTX - len(x)) for x in ids])
    with torch.no_grad():
        logits = hf(batch).logits
    greedy, other = [], []
    for context, x, row in zip(contexts, ids, logits):
        best = tokenizer.decode([int(row[len(x) - 1].argmax())])
        if best.startswith(" ") and best[1:].isalpha():
            greedy.append(context + best)
        else:
            other.append(context + " " + rng.choice(WORDS))
    assert len(greedy) >= n_docs // 2 and len(other) >= n_docs // 2
    with path.open("w") as f:
        for text in [d for pair in zip(greedy[:n_docs // 2], other) for d in pair]:
            f.write(json.dumps({"text": text}) + "\n")
    return path


def lambada_files(tmp_path, hf, tokenizer):
    yield "synthetic", synthetic_lambada(tmp_path / "synthetic.jsonl", hf, tokenizer)
    if REAL_LAMBADA.is_file():
        real = tmp_path / "real.jsonl"
        with REAL_LAMBADA.open() as f:
            real.write_text("".join(f.readline() for _ in range(30)))
        yield "real", real


# Runs on a synthetic file everywhere, and on the real LAMBADA's first documents too when shared/data has it
@pytest.mark.shared_data
def test_lambada_through_simple_evaluate_matches_hf_model(lms, models_, tokenizers_, tmp_path):
    ours, reference = lms
    with offline():
        checked = []
        for name, data in lambada_files(tmp_path, models_[0], tokenizers_[0]):
            task_dir = tmp_path / name
            write_local_tasks(task_dir, lambada_file=data, cache_dir=tmp_path / "cache")
            tasks = task_manager(task_dir, include_defaults=False)
            runs = [simple_evaluate(model=lm, tasks=[LAMBADA_TASK], task_manager=tasks, log_samples=True,
                                    bootstrap_iters=0) for lm in (ours, reference)]
            # Per document: the log-likelihood of the last word and whether it is the greedy continuation
            got, expected = [[s["resps"][0][0]
                              for s in sorted(run["samples"][LAMBADA_TASK], key=lambda s: s["doc_id"])]
                             for run in runs]
            assert len(got) == len(expected) == sum(1 for _ in data.open())
            for (ll, greedy), (ll_ref, greedy_ref) in zip(got, expected):
                assert abs(ll - ll_ref) <= TOLERANCE
                assert greedy == greedy_ref
            # The aggregates: accuracy exactly, perplexity to the same relative tolerance
            metrics, metrics_ref = [run["results"][LAMBADA_TASK] for run in runs]
            assert metrics["acc,none"] == metrics_ref["acc,none"]
            assert metrics["perplexity,none"] == pytest.approx(metrics_ref["perplexity,none"], rel=TOLERANCE)
            checked.append((name, metrics["acc,none"]))
        # The synthetic file has greedy and non-greedy last words, so the accuracy is strictly between 0 and 1
        assert 0 < checked[0][1] < 1


def test_offline_is_undone_on_leaving_the_block(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with offline():
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_right_padding_does_not_change_scores(lms):
    # Batched with right padding (batch 4, lengths 3 to 40) and one request at a time give the same numbers
    ours, _ = lms
    rng = random.Random(2)
    requests = [Instance("loglikelihood", {}, (words(rng, n), " " + rng.choice(WORDS)), i)
                for i, n in enumerate([2, 30, 5, 17, 9, 25, 1, 12])]
    batched = ours.loglikelihood(requests)
    one_by_one = EvalHarnessAdapter(ours.model, ours.tokenizer, batch_size=1, progress=False).loglikelihood(requests)
    for (ll, greedy), (ll_one, greedy_one) in zip(batched, one_by_one):
        assert ll == pytest.approx(ll_one, abs=1e-5)
        assert greedy == greedy_one


def test_greedy_continuation_tokens_are_flagged_greedy(lms, models_):
    # Continuations that the reference model generates greedily are greedy for our adapter; change one token
    # and they are not
    ours, _ = lms
    hf, _ = models_
    rng = random.Random(3)
    requests = []
    for n in (3, 8, 20):
        context = ours.tok_encode(words(rng, n))
        continuation = hf.generate(torch.tensor([context]), max_new_tokens=4, do_sample=False,
                                   pad_token_id=1)[0, len(context):].tolist()
        requests.append((None, context, continuation))
        requests.append((None, context, continuation[:-1] + [(continuation[-1] + 1) % 300]))
    flags = [greedy for _, greedy in ours._loglikelihood_tokens(requests)]
    assert flags == [True, False] * 3


def test_long_contexts_are_truncated_from_the_left_like_hflm(lms):
    # Contexts of up to 4 windows: both keep the last N_CTX tokens of context + continuation
    ours, reference = lms
    rng = random.Random(4)
    requests = [Instance("loglikelihood", {}, (words(rng, n), " " + words(rng, 2)), i)
                for i, n in enumerate([40, 100, 200])]
    assert max(len(ours.tok_encode(r.args[0])) for r in requests) > 3 * N_CTX
    for (ll, greedy), (ll_ref, greedy_ref) in zip(ours.loglikelihood(requests), reference.loglikelihood(requests)):
        assert abs(ll - ll_ref) <= TOLERANCE and greedy == greedy_ref


def test_a_continuation_longer_than_the_context_is_refused_with_a_message(lms):
    # The whole continuation is scored or nothing: one longer than max_length cannot be, and must not fail
    # as a shape mismatch deep inside the scoring
    ours, _ = lms
    continuation = list(range(2, ours.max_length + 7))
    with pytest.raises(ValueError, match="max_length"):
        ours._loglikelihood_tokens([(None, [0], continuation)])


def test_rolling_loglikelihood_is_the_sum_of_token_log_probs(lms, models_):
    r"""
    Computed directly from the reference model: token $t_j$ is predicted once, from at most `N_CTX` inputs
    ending at $t_{j-1}$, in windows of `N_CTX` predictions (the first input starting with end-of-text).
    """
    ours, _ = lms
    hf, _ = models_
    rng = random.Random(5)
    texts = [words(rng, 5), words(rng, 40), words(rng, 300)]
    expected = []
    for text in texts:
        tokens = ours.tok_encode(text)
        padded = [0] + tokens
        total = 0.0
        for start in range(0, len(tokens), N_CTX):
            end = min(start + N_CTX, len(tokens))
            inputs = padded[max(0, end - N_CTX):end]
            with torch.no_grad():
                log_probs = hf(torch.tensor([inputs])).logits[0].double().log_softmax(-1)
            predicted = torch.tensor(tokens[start:end])
            total += float(log_probs[-len(predicted):].gather(-1, predicted[:, None]).sum())
        expected.append(total)
    assert len(ours.tok_encode(texts[-1])) > 3 * N_CTX
    got = ours.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    for value, reference in zip(got, expected):
        assert value == pytest.approx(reference, abs=TOLERANCE * max(1.0, abs(reference) / 100))


def test_generate_until_stops_at_stop_sequences_and_max_gen_toks(lms, models_):
    ours, reference = lms
    hf, _ = models_
    rng = random.Random(6)
    contexts = [words(rng, n) for n in (4, 4, 9, 15)]

    def generate(lm, stops, max_gen_toks):
        return lm.generate_until([Instance("generate_until", {}, (c, {"until": s, "max_gen_toks": max_gen_toks}), i)
                                  for i, (c, s) in enumerate(zip(contexts, stops))])

    free = generate(ours, [[]] * len(contexts), 24)
    assert free == generate(reference, [[]] * len(contexts), 24)
    # A stop sequence from the middle of each free generation: the text now ends right before its first
    # occurrence
    stops = [[text[len(text) // 2:len(text) // 2 + 2]] for text in free]
    cut = generate(ours, stops, 24)
    for text, (stop,), short in zip(free, stops, cut):
        assert stop and stop in text and stop not in short
        assert short == text.split(stop)[0]
    assert cut == generate(reference, stops, 24)
    # At most `max_gen_toks` tokens: the 5 tokens the reference model generates greedily
    short = generate(ours, [[]] * len(contexts), 5)
    for context, text, full in zip(contexts, short, free):
        ids = torch.tensor([ours.tok_encode(context)])
        expected = hf.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=1)[0, ids.shape[1]:]
        assert text == ours.tok_decode(expected.tolist()) and len(text) < len(full)


def reduced_precision(model: torch.nn.Sequential, variant: str) -> torch.nn.Sequential:
    if variant in ("bfloat16", "float16"):
        return model.to(getattr(torch, variant))
    from labml_nn.neox.model import TransformerLayer
    from labml_nn.neox.llm_int8 import make_llm_int8_layer
    implementation = variant.split("-", 1)[1]
    if implementation == "bitsandbytes":
        pytest.importorskip("bitsandbytes")
    return torch.nn.Sequential(*[make_llm_int8_layer(m, implementation=implementation)
                                 if isinstance(m, TransformerLayer) else m for m in model]).eval()


@pytest.mark.parametrize("variant", ["bfloat16", "float16", "int8-reference", "int8-bitsandbytes"])
def test_reduced_precision_models_score_close_to_fp32(lms, models_, variant):
    # The adapter takes fp16, bf16 and LLM.int8 models alike and returns fp32 log-likelihoods close to fp32's
    ours, _ = lms
    rng = random.Random(7)
    requests = [Instance("loglikelihood", {}, (words(rng, n), " " + rng.choice(WORDS)), i)
                for i, n in enumerate([3, 10, 30])]
    full = ours.loglikelihood(requests)
    reduced = EvalHarnessAdapter(reduced_precision(our_model_from_hf(models_[0]), variant), ours.tokenizer,
                                 progress=False)
    # Log-likelihoods here are -5 to -30 nats; the rounding of each variant moves them by up to about a third
    # of these tolerances (and by something: the variant really ran)
    tolerance = {"float16": 0.03, "bfloat16": 0.1}.get(variant, 0.5)
    for (ll, _), (ll_reduced, _) in zip(full, reduced.loglikelihood(requests)):
        assert isinstance(ll_reduced, float)
        assert 0 < abs(ll_reduced - ll) <= tolerance


def test_command_line_evaluates_a_checkpoint_offline(models_, tokenizers_, lms, tmp_path, capsys):
    r"""
    `python -m labml_nn.neox.evaluation` on a two-rank slim checkpoint of the same weights: LAMBADA from a
    local file and perplexity of local text, printed as a table and written as JSON; the figures are the
    adapter's (which the tests above compare with HFLM).
    """
    from helpers import write_slim_from_hf
    from labml_nn.neox.evaluation.__main__ import main

    hf, _ = models_
    tokenizer, _ = tokenizers_
    checkpoint = tmp_path / "checkpoint"
    write_slim_from_hf(hf, checkpoint, tp=2, tokenizer=False)
    tokenizer.save(str(checkpoint / "20B_tokenizer.json"))
    lambada = synthetic_lambada(tmp_path / "lambada.jsonl", hf, tokenizer, n_docs=8)
    rng = random.Random(8)
    texts = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path, n in zip(texts, (50, 150)):
        path.write_text(words(rng, n) + ".\n")

    output = tmp_path / "results.json"
    main(["--checkpoint", str(checkpoint), "--tasks", "lambada_openai", "--lambada-file", str(lambada),
          "--text-file", *map(str, texts), "--device", "cpu", "--batch-size", "3", "--output", str(output)])
    printed = capsys.readouterr().out
    results = json.loads(output.read_text())["results"]
    assert "lambada_openai_local" in printed and "bits_per_byte" in printed

    # LAMBADA accuracy: the fraction of documents whose last word is greedy, from the adapter directly
    documents = [json.loads(line)["text"] for line in lambada.open()]
    requests = [Instance("loglikelihood", {}, (d.rsplit(" ", 1)[0], " " + d.rsplit(" ", 1)[1]), i)
                for i, d in enumerate(documents)]
    scores = lms[0].loglikelihood(requests)
    assert results["lambada_openai_local"]["acc,none"] == pytest.approx(sum(g for _, g in scores) / len(scores))
    # Bits per byte: minus the total log-likelihood in bits over the total UTF-8 bytes of the documents
    contents = [p.read_text() for p in texts]
    total = sum(lms[0].loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (c,), i)
                                              for i, c in enumerate(contents)]))
    n_bytes = sum(len(c.encode()) for c in contents)
    assert results["text_local"]["bits_per_byte,none"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-4)


def test_generate_until_batches_contexts_of_different_lengths_as_one_by_one(lms):
    # Five contexts of different token counts share one left-padded batch; each text must be the one the
    # adapter generates with a batch of one
    ours, _ = lms
    rng = random.Random(8)
    requests = [Instance("generate_until", {}, (words(rng, n), {"until": [], "max_gen_toks": 12}), i)
                for i, n in enumerate((2, 11, 5, 7, 3))]
    one_by_one = EvalHarnessAdapter(ours.model, ours.tokenizer, batch_size=1, progress=False)
    batched = EvalHarnessAdapter(ours.model, ours.tokenizer, batch_size=5, progress=False)
    assert len({len(ours.tok_encode(r.args[0])) for r in requests}) == 5
    assert batched.generate_until(requests) == one_by_one.generate_until(requests)
