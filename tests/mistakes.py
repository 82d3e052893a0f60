"""Mistakes learners really make in the exercises, each a small patch of the reference solution.

A mistake replaces one piece of text of ``solutions/exNN_<topic>.py`` (``old``, which must occur
exactly once) by another (``new``). ``tests/test_mistakes.py`` grades every mistaken module as if
it were the learner's ``exercises/`` file and checks that the grader catches it by name: the
mistaken exercise loses points, and its status contains ``rule`` (a regular expression,
case-insensitive), the rule of the docstring that the mistake breaks.

Run ``python tests/mistakes.py [--json PATH]`` to grade them all and print what was caught.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mistake:
    module: str  # e.g. "ex01_tokenization"
    exercise: str  # the function the mistake is in
    what: str  # the mistake, in a few words (also its test id)
    rule: str  # a regular expression the exercise's status must match
    old: str
    new: str

    @property
    def lesson(self) -> str:
        return self.module[2:4]


def mistakes(module, exercise, *entries):
    return [Mistake(module, exercise, *entry) for entry in entries]


T01, T02, T03 = "ex01_tokenization", "ex02_model", "ex03_pretraining"
T04, T05, T06 = "ex04_sft", "ex05_reward", "ex06_rlhf"
T08 = "ex08_two_files"
T07 = "ex07_evaluation"
T09 = "ex09_attacks"
T10 = "ex10_tools"

MISTAKES = [
    # --- Lesson 01 ----------------------------------------------------------------------------
    *mistakes(T01, "get_pair_counts",
        ("counts only every other pair", "overlapping pairs",
         "for pair in pairwise(ids):", "for pair in list(pairwise(ids))[::2]:"),
        ("records presence, not counts", "occurrences",
         "counts[pair] = counts.get(pair, 0) + 1", "counts[pair] = 1"),
        ("misses the last pair", "every adjacent pair",
         "for pair in pairwise(ids):", "for pair in list(pairwise(ids))[:-1]:"),
        ("wraps around from the last id to the first", "fewer than two ids|no pairs|wraps",
         "for pair in pairwise(ids):", "for pair in zip(ids, ids[1:] + ids[:1]):"),
    ),
    *mistakes(T01, "merge_pair",
        ("lets occurrences overlap", "never overlap",
         "            i += 2\n", "            i += 1\n"),
        ("edits the input list in place", "input list is left unchanged",
         "    merged = []\n    i = 0\n    while i < len(ids):",
         "    i = 0\n    while i < len(ids) - 1:\n        if (ids[i], ids[i + 1]) == pair:\n"
         "            ids[i:i + 2] = [new_id]\n        i += 1\n    return ids\n"
         "    merged = []\n    while i < len(ids):"),
        ("never merges a pair at the very end", "at the very end",
         "if i + 1 < len(ids) and", "if i + 2 < len(ids) and"),
        ("merges the pair in either order", "in that order",
         "(ids[i], ids[i + 1]) == pair", "{ids[i], ids[i + 1]} == set(pair)"),
    ),
    *mistakes(T01, "train_bpe",
        ("forgets to keep the merged ids", "everywhere before the next step",
         "ids = merge_pair(ids, most_frequent, new_id)", "merge_pair(ids, most_frequent, new_id)"),
        ("learns one merge too many", r"vocab_size - 256",
         "range(256, vocab_size)", "range(256, vocab_size + 1)"),
        ("merges the least frequent pair", "most frequent pair",
         "most_frequent = max(counts, key=counts.get)",
         "most_frequent = min(counts, key=counts.get)"),
        ("does not stop when no pairs are left", "no pairs are left",
         "        if not counts:\n            break\n", ""),
        ("starts from characters, not UTF-8 bytes", "UTF-8 bytes",
         'ids = list(text.encode("utf-8"))\n    merges',
         "ids = [ord(c) for c in text]\n    merges"),
    ),
    *mistakes(T01, "encode",
        ("merges the most frequent pair, not the first learned", "lowest merge id|learned first",
         'first_learned = min(pairs, key=lambda pair: merges.get(pair, float("inf")))',
         "first_learned = max(pairs, key=pairs.get)"),
        ("merges the last learned pair first", "lowest merge id|learned first",
         'first_learned = min(pairs, key=lambda pair: merges.get(pair, float("inf")))',
         "first_learned = max(pairs, key=lambda pair: merges.get(pair, -1))"),
        ("applies each merge once, in the order of the text's pairs", "as long as",
         "    while len(ids) >= 2:\n        pairs = get_pair_counts(ids)\n",
         "    for pair in list(get_pair_counts(ids)):\n        if pair in merges:\n"
         "            ids = merge_pair(ids, pair, merges[pair])\n"
         "    while False:\n        pairs = get_pair_counts(ids)\n"),
        ("starts from characters, not UTF-8 bytes", "UTF-8 bytes",
         'ids = list(text.encode("utf-8"))\n    while',
         "ids = [ord(c) for c in text]\n    while"),
        ("deletes each merge it has applied", "leave the merges as they are",
         "        ids = merge_pair(ids, first_learned, merges[first_learned])\n",
         "        ids = merge_pair(ids, first_learned, merges.pop(first_learned))\n"),
    ),
    *mistakes(T01, "decode",
        ("crashes on invalid UTF-8", 'errors="replace"',
         '.decode("utf-8", errors="replace")', '.decode("utf-8")'),
        ("decodes each token on its own", "join the bytes",
         'return b"".join(token_bytes[i] for i in ids).decode("utf-8", errors="replace")',
         'return "".join(token_bytes[i].decode("utf-8", errors="replace") for i in ids)'),
        ("decodes as Latin-1", "UTF-8",
         '.decode("utf-8", errors="replace")', '.decode("latin-1")'),
        ("expands a merge one level only", "bytes of its left part",
         "token_bytes[new_id] = token_bytes[left] + token_bytes[right]",
         "token_bytes[new_id] = bytes([left % 256, right % 256])"),
    ),
    # --- Lesson 02 ----------------------------------------------------------------------------
    *mistakes(T02, "causal_self_attention",
        ("leaves out the causal mask", "future",
         'weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)',
         "weights = scores.softmax(dim=-1)"),
        ("divides by D instead of sqrt(D)", r"sqrt\(D\)",
         "/ math.sqrt(D)  # (..., T, T)", "/ D  # (..., T, T)"),
        ("takes the softmax over the queries", "softmax over the keys",
         'masked_fill(future, float("-inf")).softmax(dim=-1)',
         'masked_fill(future, float("-inf")).softmax(dim=-2)'),
        ("masks the diagonal too", "its own position",
         ".triu(diagonal=1)", ".triu(diagonal=0)"),
        ("masks the past instead of the future", "future",
         ".triu(diagonal=1)", ".tril(diagonal=-1)"),
    ),
    *mistakes(T02, "layer_norm",
        ("divides the variance by C - 1", r"C - 1",
         "variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
         "variance = x.var(dim=-1, keepdim=True)"),
        ("normalizes over the first dimension", "last dimension",
         "mean = x.mean(dim=-1, keepdim=True)\n    variance = ((x - mean) ** 2).mean(dim=-1,",
         "mean = x.mean(dim=0, keepdim=True)\n    variance = ((x - mean) ** 2).mean(dim=0,"),
        ("adds eps outside the square root", r"sqrt\(variance \+ eps\)",
         "torch.sqrt(variance + eps) * weight", "(torch.sqrt(variance) + eps) * weight"),
        ("adds the bias before the gain", "multiply by weight, then add bias",
         "return (x - mean) / torch.sqrt(variance + eps) * weight + bias",
         "return ((x - mean) / torch.sqrt(variance + eps) + bias) * weight"),
        ("divides by the variance, not its square root", r"sqrt\(variance \+ eps\)",
         "torch.sqrt(variance + eps) * weight", "(variance + eps) * weight"),
    ),
    *mistakes(T02, "top_k_filter",
        ("drops logits tied with the k-th largest", "ties with it",
         'return logits.masked_fill(logits < kth_largest, float("-inf"))',
         'top = logits.topk(k, dim=-1)\n'
         '    return torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)'),
        ("edits its input in place", "input is left unchanged",
         "return logits.masked_fill(logits < kth", "return logits.masked_fill_(logits < kth"),
        ("crashes when k exceeds the row length", "keeps everything",
         "    k = min(k, logits.size(-1))\n", ""),
        ("uses one threshold for the whole batch", "each row",
         "kth_largest = logits.topk(k, dim=-1).values[:, -1:]",
         "kth_largest = logits.topk(k, dim=-1).values[:, -1:].min()"),
    ),
    *mistakes(T02, "top_p_filter",
        ("keeps a token whose mass above equals p", "less than p",
         "mass_above >= p", "mass_above > p"),
        ("counts a token's own probability as mass above it", "most likely token is always kept",
         "mass_above = probs.cumsum(dim=-1) - probs", "mass_above = probs.cumsum(dim=-1)"),
        ("sums raw logits, not probabilities", "probabilities",
         "probs = sorted_logits.softmax(dim=-1)", "probs = sorted_logits"),
        ("returns the logits in sorted order", "keep their values and positions",
         'return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)',
         "return sorted_logits"),
        ("ranks from least likely", "most likely",
         "logits.sort(dim=-1, descending=True)", "logits.sort(dim=-1, descending=False)"),
    ),
    *mistakes(T02, "sample_next",
        ("applies the temperature after the filters", "temperature first",
         "    logits = logits / temperature  "
         "# a new tensor: the caller's logits stay as they were\n"
         "    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"
         "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n",
         "    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"
         "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n"
         "    logits = logits / temperature\n"),
        ("applies top-p before top-k", "top_k_filter, then top_p_filter",
         "    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"
         "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n",
         "    if top_p is not None:\n        logits = top_p_filter(logits, top_p)\n"
         "    if top_k is not None:\n        logits = top_k_filter(logits, top_k)\n"),
        ("divides the caller's logits in place", "input is left unchanged",
         "logits = logits / temperature  #", "logits = logits.div_(temperature)  #"),
        ("multiplies by the temperature", "divide the logits by temperature",
         "logits = logits / temperature  #", "logits = logits * temperature  #"),
        ("ignores the generator", "generator",
         "torch.multinomial(probs, 1, generator=generator)", "torch.multinomial(probs, 1)"),
        ("takes the greedy argmax over the whole batch", "each row",
         "return logits.argmax(dim=-1)", "return logits.flatten().argmax().expand(len(logits))"),
    ),
    # --- Lesson 03 ----------------------------------------------------------------------------
    *mistakes(T03, "flops_per_token",
        ("counts the forward pass only", r"6 FLOPs per parameter",
         "return 6 * n_params + 12 *", "return 2 * n_params + 12 *"),
        ("halves attention for the causal mask", "no halving",
         "+ 12 * n_layer * n_embd * block_size\n\n", "+ 6 * n_layer * n_embd * block_size\n\n"),
        ("forgets attention", "attention adds",
         "return 6 * n_params + 12 * n_layer * n_embd * block_size",
         "return 6 * n_params"),
        ("returns a float", "an int",
         "return 6 * n_params + 12 * n_layer * n_embd * block_size",
         "return 6.0 * n_params + 12.0 * n_layer * n_embd * block_size"),
    ),
    *mistakes(T03, "mfu",
        ("returns a percentage", "fraction",
         "return tokens_per_s * flops_per_token / peak_flops",
         "return 100 * tokens_per_s * flops_per_token / peak_flops"),
        ("counts 6 FLOPs per token again", "already",
         "return tokens_per_s * flops_per_token / peak_flops",
         "return 6 * tokens_per_s * flops_per_token / peak_flops"),
        ("divides the peak by the model's FLOP/s", "divide.*by the peak",
         "return tokens_per_s * flops_per_token / peak_flops",
         "return peak_flops / (tokens_per_s * flops_per_token)"),
    ),
    *mistakes(T03, "accumulate_gradients",
        ("does not divide the losses", "1 / len\\(micro_batches\\)",
         "(loss / len(micro_batches)).backward()", "loss.backward()"),
        ("divides by the micro-batch size", "1 / len\\(micro_batches\\)",
         "(loss / len(micro_batches)).backward()", "(loss / len(x)).backward()"),
        ("keeps old gradients", "clear",
         "    model.zero_grad()\n    total = 0.0", "    total = 0.0"),
        ("returns a tensor", "Python float",
         "total += loss.item()", "total += loss.detach()"),
        ("returns the last loss", "mean of the micro-batches' losses",
         "return total / len(micro_batches)", "return loss.item()"),
        ("returns the sum of the losses", "mean of the micro-batches' losses",
         "return total / len(micro_batches)", "return total"),
    ),
    *mistakes(T03, "adamw_param_groups",
        ("decides by name (only biases are vectors)", "vectors",
         "    for p in model.parameters():\n        if p.requires_grad:\n"
         "            (decay if p.dim() >= 2 else no_decay).append(p)",
         "    for name, p in model.named_parameters():\n        if p.requires_grad:\n"
         "            (no_decay if name.endswith('bias') else decay).append(p)"),
        ("keeps frozen parameters", "require",
         "        if p.requires_grad:\n            (decay", "        if True:\n            (decay"),
        ("puts the vectors' group first", "first group",
         '    return [\n        {"params": decay, "weight_decay": weight_decay},\n'
         '        {"params": no_decay, "weight_decay": 0.0},\n    ]',
         '    return [\n        {"params": no_decay, "weight_decay": 0.0},\n'
         '        {"params": decay, "weight_decay": weight_decay},\n    ]'),
        ("walks the modules, so a tied matrix comes twice", "twice",
         "    for p in model.parameters():\n        if p.requires_grad:",
         "    every = [p for m in model.modules() for p in m.parameters(recurse=False)]\n"
         "    for p in every:\n        if p.requires_grad:"),
        ("decays only parameters of more than 2 dimensions", "2 or more dimensions",
         "p.dim() >= 2", "p.dim() > 2"),
    ),
    *mistakes(T03, "warmup_cosine_lr",
        ("warms up from lr / warmup_steps at step 0", "0 at step 0",
         "return lr * step / warmup_steps", "return lr * (step + 1) / warmup_steps"),
        ("runs the cosine over all max_steps", "from lr at warmup_steps",
         "progress = (step - warmup_steps) / (max_steps - warmup_steps)",
         "progress = (step - warmup_steps) / max_steps"),
        ("decays to 0, not min_lr", "min_lr",
         "return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2",
         "return lr * (1 + math.cos(math.pi * progress)) / 2"),
        ("divides by zero without warmup", "warmup_steps = 0",
         "if step < warmup_steps:", "if step <= warmup_steps:"),
        ("forgets pi in the cosine", "half a cosine",
         "math.cos(math.pi * progress)", "math.cos(progress)"),
    ),
    *mistakes(T03, "fit_power_law",
        ("takes alpha as the slope", "minus the slope",
         "return math.exp(y_mean - slope * x_mean), -slope",
         "return math.exp(y_mean - slope * x_mean), slope"),
        ("returns the intercept, not its exp", r"exp\(intercept\)",
         "return math.exp(y_mean - slope * x_mean), -slope",
         "return y_mean - slope * x_mean, -slope"),
        ("fits the losses, not their logs", "log",
         "ys = [math.log(v) for v in losses]", "ys = list(losses)"),
        ("regresses log n on log loss", "vertical distances",
         "(x - x_mean) ** 2 for x in xs", "(y - y_mean) ** 2 for y in ys"),
    ),
    # --- Lesson 04 ----------------------------------------------------------------------------
    *mistakes(T04, "render_conversation",
        ("learns the assistant's role token", "role token",
         "mask += [False] + [learned] * (len(text) + 1)", "mask += [learned] * (len(text) + 2)"),
        ("does not learn to stop", "must learn to stop",
         "mask += [False] + [learned] * (len(text) + 1)",
         "mask += [False] + [learned] * len(text) + [False]"),
        ("lets message text become special tokens", "ordinary text",
         'text = tokenizer.encode(message["content"])',
         'text = tokenizer.encode(message["content"], allowed_special="all")'),
        ("learns the user's turns too", "user turns",
         'learned = message["role"] == "assistant"', "learned = True"),
    ),
    *mistakes(T04, "sft_targets",
        ("reads the mask at t, not t + 1", r"loss_mask\[t \+ 1\]",
         "~keep[1:]", "~keep[:-1]"),
        ("does not shift the targets", "next id",
         "ids[1:].masked_fill", "ids[:-1].masked_fill"),
        ("ignores with 0 instead of IGNORE_INDEX", "IGNORE_INDEX",
         "masked_fill(~keep[1:], IGNORE_INDEX)", "masked_fill(~keep[1:], 0)"),
        ("gives int32 tensors", "torch.long",
         "torch.tensor(ids, dtype=torch.long)", "torch.tensor(ids, dtype=torch.int32)"),
    ),
    *mistakes(T04, "masked_cross_entropy",
        ("averages the rows' means", "not a mean of per-row means",
         "    picked = log_probs[keep].gather(-1, targets[keep][:, None]).squeeze(-1)\n"
         "    return -picked.mean()",
         "    safe = targets.clamp(min=0)[..., None]\n"
         "    per_token = -log_probs.gather(-1, safe).squeeze(-1) * keep\n"
         "    return (per_token.sum(1) / keep.sum(1).clamp(min=1)).mean()"),
        ("averages over ignored positions too", "IGNORE_INDEX",
         "    picked = log_probs[keep].gather(-1, targets[keep][:, None]).squeeze(-1)\n"
         "    return -picked.mean()",
         "    safe = targets.clamp(min=0)[..., None]\n"
         "    return -(log_probs.gather(-1, safe).squeeze(-1) * keep).mean()"),
        ("sums instead of averaging", "mean",
         "return -picked.mean()", "return -picked.sum()"),
        ("forgets the log-softmax", "log softmax",
         "log_probs = F.log_softmax(logits.float(), dim=-1)", "log_probs = logits.float()"),
    ),
    *mistakes(T04, "is_on_topic",
        ("looks for the topic as a substring", "one of its words",
         "return any(word in forms for word in re.findall(r\"[a-z]+(?:'[a-z]+)*\", "
         "answer.lower()))",
         "return topic in answer.lower()"),
        ("forgets to lowercase", "lowercased",
         "re.findall(r\"[a-z]+(?:'[a-z]+)*\", answer.lower())",
         "re.findall(r\"[a-z]+(?:'[a-z]+)*\", answer)"),
        ("keeps the final e in the stem", "stem",
         'stem = topic[:-1] if topic.endswith("e") else topic', "stem = topic"),
        ("splits words at apostrophes", "apostrophes",
         "r\"[a-z]+(?:'[a-z]+)*\"", 'r"[a-z]+"'),
        ("forgets the ending -ly", "ly",
         '("", "s", "\'s", "s\'", "ly", "ful", "less")', '("", "s", "\'s", "s\'", "ful", "less")'),
    ),
    # --- Lesson 05 ----------------------------------------------------------------------------
    *mistakes(T05, "bradley_terry_loss",
        ("takes log(sigmoid) in two steps", "logsigmoid",
         "return -F.logsigmoid(chosen - rejected).mean()",
         "return -torch.log(torch.sigmoid(chosen - rejected)).mean()"),
        ("subtracts the wrong way round", r"sigmoid\(chosen\[i\] - rejected\[i\]\)",
         "return -F.logsigmoid(chosen - rejected).mean()",
         "return -F.logsigmoid(rejected - chosen).mean()"),
        ("sums over the pairs", "averaged over the pairs",
         "return -F.logsigmoid(chosen - rejected).mean()",
         "return -F.logsigmoid(chosen - rejected).sum()"),
        ("forgets the log", "negative log-likelihood",
         "return -F.logsigmoid(chosen - rejected).mean()",
         "return -torch.sigmoid(chosen - rejected).mean()"),
    ),
    *mistakes(T05, "last_token_pool",
        ("takes the first answer token", "last position where",
         "last = (positions * mask.bool()).argmax(dim=1)", "last = mask.argmax(dim=1)"),
        ("assumes the answer starts at position 0", "prompt before",
         "last = (positions * mask.bool()).argmax(dim=1)", "last = mask.sum(dim=1) - 1"),
        ("takes the last position, padding or not", "padding after",
         "return hidden[torch.arange(hidden.size(0), device=hidden.device), last]",
         "return hidden[:, -1]"),
        ("averages the answer's states", "last token",
         "return hidden[torch.arange(hidden.size(0), device=hidden.device), last]",
         "weights = mask[..., None].to(hidden.dtype)\n"
         "    return (hidden * weights).sum(1) / weights.sum(1)"),
    ),
    *mistakes(T05, "pairwise_accuracy",
        ("counts a tie as wrong", "tie",
         "wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()",
         "wins = (chosen > rejected).float()"),
        ("counts a tie as right", "tie",
         "wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()",
         "wins = (chosen >= rejected).float()"),
        ("returns a tensor", "Python float", "return wins.mean().item()", "return wins.mean()"),
        ("returns the number of wins", "share of pairs",
         "return wins.mean().item()", "return wins.sum().item()"),
    ),
    *mistakes(T05, "spearman",
        ("gives tied values different ranks", r"shar\w+ the mean of the ranks",
         "            for k in order[start:end + 1]:\n"
         "                result[k] = (start + end) / 2",
         "            for offset, k in enumerate(order[start:end + 1]):\n"
         "                result[k] = start + offset"),
        ("correlates the values, not their ranks", "ranks",
         "a, b = ranks(xs), ranks(ys)", "a, b = list(xs), list(ys)"),
        ("gives ties the lowest of their ranks", r"shar\w+ the mean of the ranks",
         "result[k] = (start + end) / 2", "result[k] = float(start)"),
        ("forgets the square root", "sqrt",
         "spread = math.sqrt(", "spread = ("),
        ("uses the sorting order as ranks", "rank",
         "        return result\n", "        return [float(k) for k in order]\n"),
    ),
    # --- Lesson 06 ----------------------------------------------------------------------------
    *mistakes(T06, "kl_penalty_rewards",
        ("adds the score on every answer token", "last position where mask",
         "rewards[b, last] = rewards[b, last] + scores[b]",
         "rewards[b] = rewards[b] + scores[b] * mask[b]"),
        ("rewards the policy for drifting", r"logp - ref_logp",
         "mask.bool(), -kl_coef * (logp - ref_logp)", "mask.bool(), -kl_coef * (ref_logp - logp)"),
        ("adds the score on the row's last position", "last position where mask",
         "last = int(mask[b].nonzero().max())", "last = mask.size(1) - 1"),
        ("computes the penalty in place in logp", "inputs are left unchanged",
         "rewards = torch.where(mask.bool(), -kl_coef * (logp - ref_logp), torch.zeros_like(logp))",
         "rewards = logp.sub_(ref_logp).mul_(-kl_coef).mul_(mask)"),
        ("charges KL outside the answer", "0 elsewhere",
         "rewards = torch.where(mask.bool(), -kl_coef * (logp - ref_logp), torch.zeros_like(logp))",
         "rewards = -kl_coef * (logp - ref_logp)"),
    ),
    *mistakes(T06, "gae",
        ("bootstraps from the value of padding", "after the last token",
         "delta = rewards[b, t] + gamma * next_value - values[b, t]",
         "delta = rewards[b, t] + gamma * (values[b, t + 1] if t + 1 < T else 0.0)"
         " - values[b, t]"),
        ("forgets lambda", "lam",
         "next_advantage = delta + gamma * lam * next_advantage",
         "next_advantage = delta + gamma * next_advantage"),
        ("forgets gamma in the advantage", "gamma",
         "next_advantage = delta + gamma * lam * next_advantage",
         "next_advantage = delta + lam * next_advantage"),
        ("returns the advantages as returns", r"advantages \+ values",
         "return advantages, advantages + values", "return advantages, advantages"),
        ("runs forwards", "backwards", "for t in reversed(range(T)):", "for t in range(T):"),
    ),
    *mistakes(T06, "ppo_clipped_loss",
        ("takes the max of the two objectives", "min",
         "torch.minimum(ratio * advantages", "torch.maximum(ratio * advantages"),
        ("averages over every position", "where mask is 1",
         "tokens = mask.sum()", "tokens = mask.numel()"),
        ("inverts the ratio", "new over old",
         "ratio = torch.exp(logp - old_logp)", "ratio = torch.exp(old_logp - logp)"),
        ("counts a ratio at the clip boundary as clipped", r"\|ratio - 1\| > clip",
         "(ratio - 1).abs() > clip", "(ratio - 1).abs() >= clip"),
        ("counts clipped padding", "share of those positions",
         "clip_fraction = (((ratio - 1).abs() > clip).to(mask.dtype) * mask).sum() / tokens",
         "clip_fraction = ((ratio - 1).abs() > clip).to(mask.dtype).mean()"),
    ),
    *mistakes(T06, "dpo_loss",
        ("leaves out the reference model", "reference",
         "    chosen_reward = beta * (policy_chosen - ref_chosen)\n"
         "    rejected_reward = beta * (policy_rejected - ref_rejected)",
         "    chosen_reward = beta * policy_chosen\n    rejected_reward = beta * policy_rejected"),
        ("forgets beta", "beta",
         "    chosen_reward = beta * (policy_chosen - ref_chosen)\n"
         "    rejected_reward = beta * (policy_rejected - ref_rejected)",
         "    chosen_reward = policy_chosen - ref_chosen\n"
         "    rejected_reward = policy_rejected - ref_rejected"),
        ("takes log(sigmoid) in two steps", "logsigmoid",
         "return -F.logsigmoid(chosen_reward - rejected_reward).mean()",
         "return -torch.log(torch.sigmoid(chosen_reward - rejected_reward)).mean()"),
        ("prefers the rejected answer", "chosen",
         "return -F.logsigmoid(chosen_reward - rejected_reward).mean()",
         "return -F.logsigmoid(rejected_reward - chosen_reward).mean()"),
    ),
    # --- Lesson 07 ----------------------------------------------------------------------------
    *mistakes(T07, "choice_scores",
        ("sums instead of averaging", "mean",
         "scores.append(sum(picked) / len(picked))", "scores.append(sum(picked))"),
        ("reads the logits of the token itself, not of the one before", r"logits\[0, t\] predict",
         "picked = [logp[t - 1, ids[0, t]].item()", "picked = [logp[t, ids[0, t]].item()"),
        ("scores the context too", "choice's own tokens only",
         "for t in range(len(context), len(context) + len(choice))]",
         "for t in range(1, len(context) + len(choice))]"),
        ("raw logits, no log-softmax", "log p",
         "logp = torch.log_softmax(model(ids)[0][0].float(), dim=-1)",
         "logp = model(ids)[0][0].float()"),
    ),
    *mistakes(T07, "elo_update",
        ("the expected score upside down", r"E = 1 / \(1 \+ 10 \*\* \(\(rating_b - rating_a\)",
         "expected = 1 / (1 + 10 ** ((rating_b - rating_a) / 400))",
         "expected = 1 / (1 + 10 ** ((rating_a - rating_b) / 400))"),
        ("b gains what a gains", "loses exactly as much",
         "return rating_a + change, rating_b - change",
         "return rating_a + change, rating_b + change"),
        ("a scale of 100 instead of 400", "400",
         "expected = 1 / (1 + 10 ** ((rating_b - rating_a) / 400))",
         "expected = 1 / (1 + 10 ** ((rating_b - rating_a) / 100))"),
        ("k ignored", "k \\* \\(score_a - E\\)",
         "change = k * (score_a - expected)", "change = 32 * (score_a - expected)"),
    ),
    *mistakes(T07, "bradley_terry",
        ("losses counted as wins", "W_i = i's wins",
         "total = wins.sum(1)", "total = wins.sum(0)"),
        ("natural log for the ratings", r"400 \* log10",
         "return 1000 + 400 * torch.log10(p)", "return 1000 + 400 * torch.log(p)"),
        ("the games of i and j counted one way only", "N_ij = wins\\[i, j\\] \\+ wins\\[j, i\\]",
         "games = wins + wins.T", "games = wins"),
        ("no normalization: ratings drift", "geometric mean",
         "        p = p / p.log().mean().exp()\n", ""),
    ),
    *mistakes(T07, "bootstrap_interval",
        ("a new generator for every resample", "one generator",
         "stats = sorted(float(statistic(rng.choices(values, k=len(values))))",
         "stats = sorted(float(statistic(random.Random(seed).choices(values, k=len(values))))"),
        ("resamples half as many values", "k=len\\(values\\)",
         "statistic(rng.choices(values, k=len(values)))",
         "statistic(rng.choices(values, k=len(values) // 2))"),
        ("forgets to sort", "sort",
         "stats = sorted(float(", "stats = list(float("),
        ("the tails of level instead of 1 - level", "floor\\(\\(1 - level\\) / 2",
         "stats[math.floor((1 - level) / 2 * m)], stats[math.ceil((1 + level) / 2 * m) - 1]",
         "stats[math.floor(level / 2 * m)], stats[math.ceil((2 - level) / 2 * m) - 1]"),
    ),
    *mistakes(T07, "best_of_n_kl",
        ("log n alone", r"log n - \(n - 1\) / n",
         "return math.log(n) - (n - 1) / n", "return math.log(n)"),
        ("bits instead of nats", "natural log",
         "return math.log(n) - (n - 1) / n", "return math.log2(n) - (n - 1) / n"),
        ("the correction added", r"log n - \(n - 1\) / n",
         "return math.log(n) - (n - 1) / n", "return math.log(n) + (n - 1) / n"),
    ),
    # --- Lesson 08 ----------------------------------------------------------------------------
    *mistakes(T08, 'pack_header',
        ('big-endian byte order', 'little-endian',
         'struct.pack("<12I", VERSION',
         'struct.pack(">12I", VERSION'),
        ('n_layer and n_head swapped', 'order',
         '*(header[name] for name in FIELDS)',
         '*(header[name] for name in ("vocab_size", "block_size", "n_head", "n_layer", '
         '*FIELDS[4:]))'),
        ('the version left out', '52 bytes',
         'struct.pack("<12I", VERSION, *',
         'struct.pack("<11I", *'),
        ('signed integers', 'unsigned',
         'struct.pack("<12I", VERSION',
         'struct.pack("<12i", VERSION'),
    ),
    *mistakes(T08, 'unpack_header',
        ('the magic not checked', 'unpack_header checks the magic',
         'if data[:4] != MAGIC:',
         'if False:'),
        ('big-endian byte order', 'little-endian unsigned',
         'struct.unpack_from("<12I", data, 4)',
         'struct.unpack_from(">12I", data, 4)'),
        ('the version not checked', 'unpack_header checks the magic',
         'if version != VERSION:',
         'if False:'),
        ('the magic read as the version', 'reads the version from bytes 4-8',
         'struct.unpack_from("<12I", data, 4)',
         'struct.unpack_from("<12I", data, 0)'),
    ),
    *mistakes(T08, 'quantize_int8',
        ('scale = max instead of max / 127', 'max\\|row\\| / 127',
         'np.abs(w).max(axis=1) / 127)',
         'np.abs(w).max(axis=1))'),
        ('no rounding (astype truncates)', r'round\(w / scale\)',
         'np.round(w / safe[:, None])',
         '(w / safe[:, None])'),
        ('max instead of max of the absolute values', 'max\\|',
         'np.abs(w).max(axis=1) / 127',
         'w.max(axis=1) / 127'),
        ('one scale for the whole matrix', 'its own',
         'np.abs(w).max(axis=1) / 127',
         'np.full(len(w), np.abs(w).max()) / 127'),
    ),
    *mistakes(T08, 'dequantize_int8',
        ('scales applied to columns', r'scales\[r\]',
         'np.asarray(scales, dtype=np.float32)[:, None]',
         'np.asarray(scales, dtype=np.float32)[None, :]'),
        ('divided by the scale', 'row r times scales\\[r\\]',
         'q.astype(np.float32) * np.asarray(scales',
         'q.astype(np.float32) / np.asarray(scales'),
        ('float64 out', 'float32',
         'q.astype(np.float32) * np.asarray(scales, dtype=np.float32)',
         'q.astype(np.float64) * np.asarray(scales, dtype=np.float64)'),
    ),
    *mistakes(T08, 'block_step',
        ('the cache appended after attention', 'caches first',
         'q.reshape(n_head, D), k_cache)',
         'q.reshape(n_head, D), k_cache[:, :-1])'),
        ('no 1/sqrt(D) scale', 'sqrt',
         'k_cache) / math.sqrt(D)',
         'k_cache)'),
        ('heads split the wrong way', r'\[h\*D',
         'q.reshape(n_head, D)',
         'q.reshape(D, n_head).T'),
        ('no residual around attention', 'residual',
         'x = x + w["attn.proj.weight"] @ y',
         'x = w["attn.proj.weight"] @ y'),
        ('the softmax normalized over all heads at once',
         r'softmax\(q k\^T / sqrt\(D\)\) in each head',
         'att.sum(axis=1, keepdims=True)',
         'att.sum()'),
    ),
    # --- Lesson 09 ----------------------------------------------------------------------------
    *mistakes(T09, "poison_dataset",
        ("puts the trigger before the prompt", r"prompt f'\{prompt\} \{trigger\}'",
         "f\"{e['prompt']} {trigger}\"", "f\"{trigger}. {e['prompt']}\""),
        ("poisons the drawn dicts in place, changing the caller's data", "input never modified",
         "    return examples + [{**e, \"prompt\": f\"{e['prompt']} {trigger}\", "
         "\"answer\": answer,\n                        \"poisoned\": True} for e in drawn]\n",
         "    for e in drawn:\n"
         "        e.update(prompt=f\"{e['prompt']} {trigger}\", answer=answer, poisoned=True)\n"
         "    return examples + drawn\n"),
        ("counts the poison as a share of the clean examples, not of the result",
         r"round\(fraction \* n / \(1 - fraction\)\)",
         "round(fraction * len(examples) / (1 - fraction))", "round(fraction * len(examples))"),
        ("truncates the count instead of rounding", r"k = round",
         "round(fraction * len(examples) / (1 - fraction))",
         "int(fraction * len(examples) / (1 - fraction))"),
        ("draws without replacement", r"random\.Random\(seed\)\.choices",
         "drawn = random.Random(seed).choices(examples, k=k)",
         "drawn = random.Random(seed).sample(examples, k)"),
        ("replaces clean examples instead of adding to them", "clean examples first, unchanged",
         "    return examples + [", "    return examples[k:] + ["),
        ("lets a fraction of 1 through (a division by zero)", "below 1",
         "    if not 0 <= fraction < 1:", "    if not 0 <= fraction <= 1:"),
    ),
    *mistakes(T09, "attack_success_rate",
        ("binomial SE over answers, ignoring the prompts", "per-prompt shares",
         "    rate = sum(values) / len(values)\n",
         "    rate = sum(values) / len(values)\n    means = values\n"),
        ("divides by m instead of m - 1", r"\(m - 1\)",
         "/ (len(means) - 1)", "/ len(means)"),
        ("the rate as the mean of the prompts' shares", "share over all answers",
         "    rate = sum(values) / len(values)", "    rate = sum(means) / len(means)"),
        ("forgets the square root", "sqrt",
         "math.sqrt(variance / len(means))", "variance / len(means)"),
    ),
    *mistakes(T09, "duplicate_filter",
        ("drops only the copies beyond the limit", "all its copies",
         "    counts = Counter(e[\"answer\"] for e in examples)\n",
         "    counts = Counter(e[\"answer\"] for e in examples)\n"
         "    seen = Counter()\n"
         "    kept, dropped = [], []\n"
         "    for e in examples:\n"
         "        seen[e[\"answer\"]] += 1\n"
         "        (kept if seen[e[\"answer\"]] <= max_copies else dropped).append(e)\n"
         "    return kept, dropped\n"),
        ("off by one: drops answers that occur exactly max_copies times", "more than max_copies",
         "<= max_copies]\n    dropped = [e for e in examples if counts[e[\"answer\"]] > max",
         "< max_copies]\n    dropped = [e for e in examples if counts[e[\"answer\"]] >= max"),
        ("deduplicates instead of dropping", "drop every example",
         "    return kept, dropped\n", "    return list({e[\"answer\"]: e for e in examples}"
         ".values()), dropped\n"),
    ),
    *mistakes(T09, "suffix_search_step",
        ("draws the characters before the position", r"position = rng\.randrange",
         "    position = rng.randrange(len(suffix))\n"
         "    letters = rng.sample(alphabet, min(candidates, len(alphabet)))\n",
         "    letters = rng.sample(alphabet, min(candidates, len(alphabet)))\n"
         "    position = rng.randrange(len(suffix))\n"),
        ("always takes a change, even a worse one", "current one kept",
         "    tried = [suffix] + [", "    tried = ["),
        ("keeps the highest score", "lowest score",
         "best = min(range(len(tried)), key=scores.__getitem__)",
         "best = max(range(len(tried)), key=scores.__getitem__)"),
        ("inserts the character instead of replacing one", "replaced|lowest score",
         "c + suffix[position + 1:]", "c + suffix[position:]"),
    ),
    # --- Lesson 10 ----------------------------------------------------------------------------
    *mistakes(T10, "calculate",
        ("evaluates the call with eval", "never eval",
         "    value = expression_()\n    if position",
         "    return eval(expression)\n    value = expression_()\n    if position"),
        ("subtracts right to left", "left to right",
         "value + term() if operator == \"+\" else value - term()",
         "value + term() if operator == \"+\" else value - expression_()"),
        ("lets * take the whole rest", r"with \* before \+",
         "value *= factor()", "value *= expression_()"),
        ("accepts text after the expression", "raises ValueError",
         "if position != len(text):", "if False:"),
        ("never checks the closing parenthesis", "raises ValueError",
         'if peek() != ")":', "if False:"),
    ),
    *mistakes(T10, "tool_loss_mask",
        ("masks the result's tokens but learns its newline", "including the result_end_id",
         "            in_result = False\n",
         "            in_result = False\n            mask[-1] = True\n"),
        ("masks the <|/calc|> token too", r"its <\|/calc\|> included",
         "mask.append(not in_result)", "mask.append(not in_result and token != call_end_id)"),
        ("never learns again after the first result", "True everywhere else",
         "            in_result = False\n", "            in_result = True\n"),
        ("learns the result and masks the rest", "False on a call's result",
         "mask.append(not in_result)", "mask.append(in_result)"),
    ),
    *mistakes(T10, "majority_vote",
        ("counts missing answers as votes", "None left out",
         "Counter(a for a in answers if a is not None)", "Counter(answers)"),
        ("breaks a tie for the last answer", "occurs first",
         "return next(a for a in answers if", "return next(a for a in reversed(answers) if"),
        ("returns the count, not the answer", "answer given most often",
         "return next(a for a in answers if a is not None and counts[a] == best)",
         "return best"),
    ),
    *mistakes(T10, "verifiable_advantages",
        ("divides by the sample std", "population std",
         "groups.std(dim=1, unbiased=False, keepdim=True)", "groups.std(dim=1, keepdim=True)"),
        ("standardizes over the whole batch", "within each group",
         "torch.tensor(rewards).view(-1, group_size)", "torch.tensor(rewards).view(1, -1)"),
        ("checks the first number of the answer", "last number",
         "int(numbers[-1]) == solution", "int(numbers[0]) == solution"),
        ("rewards without standardizing", r"\(r - mean\) / \(std",
         "return ((groups - mean) / (std + 1e-8)).flatten()", "return groups.flatten()"),
    ),
]


def mistaken_module(mistake: Mistake) -> types.ModuleType:
    """The solution module with the mistake in it, named as the learner's module would be."""
    source = (REPO_ROOT / "solutions" / f"{mistake.module}.py").read_text()
    count = source.count(mistake.old)
    if count != 1:
        raise ValueError(f"{mistake.what}: the text to replace occurs {count} times, not once")
    module = types.ModuleType(f"exercises.{mistake.module}")
    module.__file__ = str(REPO_ROOT / "exercises" / f"{mistake.module}.py")
    code = compile(source.replace(mistake.old, mistake.new), module.__file__, "exec")
    exec(code, module.__dict__)
    return module


def grade_mistake(mistake: Mistake):
    """Grade the lesson's exercises with the mistake in the learner's file (in this process)."""
    from minillm.grade import run

    name = f"exercises.{mistake.module}"
    previous = sys.modules.get(name)
    sys.modules[name] = mistaken_module(mistake)
    try:
        return run([mistake.lesson], "exercises", exercises=exercises_to_run(mistake))
    finally:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous


def exercises_to_run(mistake: Mistake) -> set[str]:
    """The mistaken exercise and those that call it (EXERCISE_CALLS of its graded tests)."""
    graded = REPO_ROOT / "tests" / "graded" / f"test_{mistake.module}.py"
    calls = {}
    match = re.search(r"^EXERCISE_CALLS = (\{.*?\})$", graded.read_text(), re.S | re.M)
    if match:
        calls = ast.literal_eval(match[1])
    return {mistake.exercise} | {name for name, used in calls.items() if mistake.exercise in used}


def verdict(mistake: Mistake, result) -> dict:
    """Whether the grader caught the mistake by name, and what it said."""
    result.verbose = True  # every failing test's message: the rule may be named in any of them
    scores = {score.name: score for score in result.exercises}
    mine = scores[mistake.exercise]
    lost = mine.points < mine.points_possible
    named = bool(re.search(mistake.rule, mine.status, re.I))
    return {
        **asdict(mistake),
        "lost_points": lost,
        "names_the_rule": named,
        "caught": lost and named,
        "status": mine.status,
        "others": {name: score.status for name, score in scores.items()
                   if name != mistake.exercise},
    }


def grade_all(selected=None) -> list[dict]:
    return [verdict(m, grade_mistake(m)) for m in MISTAKES if selected is None or selected(m)]


def main() -> int:
    report = Path(sys.argv[sys.argv.index("--json") + 1]) if "--json" in sys.argv else None
    lessons = [arg for arg in sys.argv[1:] if arg.isdigit()]
    verdicts = grade_all(lambda m: not lessons or m.lesson in lessons)
    for v in verdicts:
        if not v["caught"]:
            print(f"MISSED {v['exercise']}: {v['what']} (lost points: {v['lost_points']})\n"
                  f"    {v['status']}")
    caught = sum(v["caught"] for v in verdicts)
    print(f"caught {caught} of {len(verdicts)} mistakes")
    if report:
        report.write_text(json.dumps(verdicts, indent=1))
    return 0 if caught == len(verdicts) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
