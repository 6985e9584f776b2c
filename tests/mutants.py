"""tests/mutants.py - a small mutation harness for the ROPD core (a tool, not a test: pytest does not
collect it, CI does not run it).

Each mutant below plants one semantic bug - a flipped advantage sign, a clip range swapped, a cache
key that forgets the temperature - by replacing an exact snippet of one file (it must occur exactly
once; a mutant may replace several) in a scratch copy of the repository (the files `git ls-files`
lists; the working tree is never touched), then runs the tests a careful reader would expect to
catch that bug:

    python tests/mutants.py --jobs 2                 # every mutant, two at a time (about 6 min, 2 cores)
    python tests/mutants.py --list                   # the mutants: file, bug, tests, snippet ok?
    python tests/mutants.py --only adv_sign,clip_swapped --jobs 2
    python tests/mutants.py --fresh --jobs 2         # the mutants a fresh reader wrote, against the suite

The mutants below were each written beside the tests meant to catch them. The honest score is the
other set's: tests/mutants_fresh.py holds mutants written by someone who read only the code and the
paper, never the tests; with --fresh each runs against FRESH_SUITE (every unit and end-to-end test
file, fast ones first, stopping at the first failure), not against tests picked for it.

First the unmutated copy must pass the union of the selected tests (else a "killed" would mean
nothing); then each mutant runs `python -m pytest -q -x -p no:cacheprovider TESTS` with a timeout.
One line per mutant as it finishes, then the table in the order below (name, result, seconds, and
the test that killed it / the bug that survived / why it is invalid) and the score, killed/total:

    killed    a selected test failed (or the run timed out): the tests notice this bug
    survived  every selected test passed with the bug in place: a test is missing (see its
              description for what it breaks), unless the bug is harmless by construction
    invalid   the snippet did not occur exactly once (the code moved: update the mutant), the
              mutated file does not compile, or pytest could not import / collect it

The exit status is 0 when every mutant is killed, 1 otherwise (2: the unmutated copy fails).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# no .pyc files in the scratch copies
ENV = {"PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    bug: str                     # what the planted bug does, in one line
    old: str | tuple[str, ...]   # the exact snippet(s) to replace; each must occur exactly once
    new: str | tuple[str, ...]   # the replacement(s)
    tests: tuple[str, ...]       # pytest node ids or test files that should catch it
    k: str | None = None         # an optional -k expression, applied to all of `tests`
    timeout: int = 900           # seconds

    def edits(self) -> list[tuple[str, str]]:
        if isinstance(self.old, str):
            return [(self.old, self.new)]
        return list(zip(self.old, self.new))

    def pytest_args(self) -> list[str]:
        return [*self.tests, *(["-k", self.k] if self.k else [])]


G, R, RU, T, H = ("tests/test_grpo.py::", "tests/test_ropd.py::", "tests/test_rubric.py::", "tests/test_teacher.py::",
                  "tests/test_hardening.py::")
P, A, M = "tests/test_prompts.py::", "tests/test_answers.py::", "tests/test_methods.py::"
O = "tests/test_oracles.py::"
FAVOURS = M + "test_the_update_favours_rollouts_above_their_group_mean"
BLIND = M + "test_the_judge_is_blind_and_its_arithmetic_is_not_trusted"
FELL = (M + "test_a_group_that_fell_back_gets_zero_advantage", M + "test_a_fallen_group_gets_zero_advantage_whatever_its_scores")
E2E = R + "test_each_method_end_to_end"
CLIP = (G + "test_clipping_both_sides", G + "test_dual_clip_caps_negative_advantage_loss",
        G + "test_aggregations_on_unequal_lengths", G + "test_padding_and_post_eos_tokens_get_no_gradient")
CACHE = (T + "test_local_sampling_is_reproducible_and_cached", T + "test_second_identical_run_is_served_from_the_cache",
         T + "test_changed_reference_settings_are_an_error_not_a_second_bill",
         T + "test_two_servers_with_one_model_name_do_not_share_cache_entries",
         H + "test_a_paid_judge_reask_is_reused_on_rerun", R + "test_resume_gives_the_same_weights_and_repays_nothing")

MUTANTS = [
    # ------------------------------------------------------------ grpo.py: advantages (Eq. 6)
    Mutant("adv_sign", "grpo.py", "group advantage mean - s_i: the better rollouts of a group are pushed down",
           "adv = r - r.mean(dim=1, keepdim=True)", "adv = r.mean(dim=1, keepdim=True) - r",
           (G + "test_group_advantages_no_std_is_mean_centred", G + "test_group_advantages_std_scaling")),
    Mutant("mean_not_subtracted", "grpo.py", "advantage = raw reward: the group mean is not subtracted",
           "adv = r - r.mean(dim=1, keepdim=True)", "adv = r.clone()",
           (G + "test_group_advantages_no_std_is_mean_centred", G + "test_identical_rewards_give_zero_advantage",
            G + "test_rewards_stay_aligned_with_prompts")),
    Mutant("std_ddof1", "grpo.py", "--adv-scale std divides by the sample std (ddof 1), not the population std",
           "r.var(dim=1, unbiased=False, keepdim=True)", "r.var(dim=1, unbiased=True, keepdim=True)",
           (G + "test_group_advantages_std_scaling",)),
    Mutant("std_eps_outside_root", "grpo.py", "--adv-scale std: (s - mean) / (sqrt(var) + eps), eps outside the root",
           "adv / torch.sqrt(r.var(dim=1, unbiased=False, keepdim=True) + eps)",
           "adv / (torch.sqrt(r.var(dim=1, unbiased=False, keepdim=True)) + eps)",
           (G + "test_group_advantages_std_scaling",)),
    # ------------------------------------------------------------ grpo.py: the clipped loss (Eqs. 7-8)
    Mutant("loss_adv_sign", "grpo.py", "policy_loss negates the advantages: gradient ascent on bad rollouts",
           "adv = adv.to(logp.dtype).expand_as(logp)", "adv = -adv.to(logp.dtype).expand_as(logp)", CLIP),
    Mutant("ratio_sign", "grpo.py", "importance ratio exp(old - new) instead of exp(new - old)",
           "log_ratio = logp - old_logp", "log_ratio = old_logp - logp",
           (*CLIP, G + "test_importance_ratio_is_one_on_first_update")),
    Mutant("clip_swapped", "grpo.py", "clip range [1 - clip_high, 1 + clip_low]: epsilon_low and epsilon_high swapped",
           "torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)", "torch.clamp(ratio, 1.0 - clip_high, 1.0 + clip_low)",
           CLIP),
    Mutant("clip_disabled", "grpo.py", "no clipping: the loss is the unclipped -A * ratio",
           "pg = torch.maximum(pg_unclipped, pg_clipped)", "pg = pg_unclipped", CLIP),
    Mutant("dual_clip_inverted", "grpo.py", "dual clip caps the losses below clip_c * |A| instead of above",
           "dual = (adv < 0) & (pg > -adv * clip_c)", "dual = (adv < 0) & (pg < -adv * clip_c)", CLIP),
    Mutant("old_logp_ignored", "grpo.py", "the recorded log pi_theta_old is ignored: the ratio is 1, nothing clipped",
           "old = logp.detach() if mb.old_logp is None else mb.old_logp", "old = logp.detach()",
           (R + "test_gradient_does_not_depend_on_micro_batch_size",
            G + "test_one_update_per_batch_needs_no_old_logprob_pass")),
    Mutant("micro_batch_norm", "grpo.py", "loss normalised per micro-batch, not by the whole mini-batch's token count",
           "    return float(whole.completion_mask.sum().clamp(min=1))\n",
           "    return float(mb.completion_mask.sum().clamp(min=1))\n",
           (R + "test_gradient_does_not_depend_on_micro_batch_size",)),
    # ------------------------------------------------------------ grpo.py: masks and log-probs
    Mutant("eos_not_in_mask", "grpo.py", "the completion mask stops before the first EOS: it never learns to stop",
           "return (eos_before == 0).long()", "return ((eos_before == 0) & ~is_eos).long()",
           (G + "test_completion_mask_keeps_first_eos_only", G + "test_eos_counts_in_loss_when_pad_equals_eos")),
    Mutant("temperature_ignored", "grpo.py", "token_logprobs ignores the sampling temperature (log-probs at T = 1)",
           'bias=getattr(head, "bias", None), temperature=temperature, softcap=softcap,',
           'bias=getattr(head, "bias", None), temperature=1.0, softcap=softcap,',
           (G + "test_token_logprobs_equal_naive", G + "test_importance_ratio_is_one_on_first_update",
            T + "test_hf_teacher_logprobs_match_the_student_side")),
    # ------------------------------------------------------------ grpo.py: LOPD / ExOPD
    Mutant("lopd_sign", "grpo.py", "LOPD advantage log pi_old - log pi_T: the student moves away from the teacher",
           "return ((teacher_logp - student_logp) * mask).detach()",
           "return ((student_logp - teacher_logp) * mask).detach()",
           (G + "test_lopd_advantages", E2E + "[lopd]")),
    Mutant("exopd_lambda_ignored", "grpo.py", "ExOPD drops lambda: it is LOPD whatever --exopd-lambda says",
           "return ((lam * (teacher_logp - ref_logp) - (student_logp - ref_logp)) * mask).detach()",
           "return (((teacher_logp - ref_logp) - (student_logp - ref_logp)) * mask).detach()",
           (R + "test_exopd_with_lambda_one_is_lopd", E2E + "[exopd]")),
    # ------------------------------------------------------------ grpo.py: the update
    Mutant("grad_clip_skipped", "grpo.py", "no grad-norm clipping (the norm is still measured and logged)",
           "norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)",
           'norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))',
           (G + "test_the_update_clips_the_gradient_norm",)),
    Mutant("nan_guard_removed", "grpo.py", "the optimizer steps on a NaN loss / gradient norm",
           "if bad:  # never step on NaN", "if False:  # never step on NaN",
           (H + "test_update_policy_takes_no_step_on_nan", H + "test_nan_is_never_trained_on")),
    # ------------------------------------------------------------ ropd.py: rewards -> advantages -> update
    Mutant("reward_shift", "ropd.py", "judged rewards rotated by one group: prompt i gets prompt i+1's rewards",
           "return Rewards(scores=torch.tensor([x for res in results for x in res.rewards]),",
           "return Rewards(scores=torch.tensor([x for res in results[1:] + results[:1] for x in res.rewards]),",
           (E2E + "[ropd]", E2E + "[tjudge]", G + "test_rewards_stay_aligned_with_prompts", BLIND, FAVOURS + "[ropd]")),
    Mutant("adv_shift", "ropd.py", "advantages rotated by one group before the update: misaligned with their prompts",
           "adv = grpo.group_advantages(rewards.scores, G, scale=scale).view(-1, G)",
           "adv = grpo.group_advantages(rewards.scores.roll(G), G, scale=scale).view(-1, G)",
           (*FELL, FAVOURS + "[grpo]", G + "test_rewards_stay_aligned_with_prompts")),
    Mutant("adv_zeroed", "ropd.py",
           "the update gets zero advantages: nothing is learned (AdamW's decay still moves the weights)",
           "completion_mask=ro.completion_mask, old_logp=ro.old_logp, advantages=adv,",
           "completion_mask=ro.completion_mask, old_logp=ro.old_logp, advantages=adv * 0,",
           (FAVOURS + "[grpo]", FAVOURS + "[ropd]")),
    Mutant("fallback_nonzero", "ropd.py", "a fallback group gets advantage -(batch mean reward) instead of 0",
           "dtype=torch.bool)] = 0.0", "dtype=torch.bool)] = -float(rewards.scores.mean())",
           (*FELL, R + "test_failure_policy_stops_above_the_rate")),
    Mutant("failure_policy_removed", "ropd.py", "the --max-fallback-rate check is gone: a broken judge trains on noise",
           "if len(failed) > max_rate * len(fallback):", "if False:",
           (R + "test_failure_policy_stops_above_the_rate",)),
    Mutant("failure_policy_inverted", "ropd.py", "the --max-fallback-rate check inverted: stops when few groups fail",
           "if len(failed) > max_rate * len(fallback):", "if len(failed) < max_rate * len(fallback):",
           (R + "test_failure_policy_stops_above_the_rate", R + "test_partial_failures_are_counted_and_tolerated")),
    Mutant("outcome_lenient", "ropd.py", "grpo's outcome reward is not strict: a truncated '0+7=' earns 1 for answer 7",
           "scores = [float(answers.row_correct(x, rows[i // G], strict=True))",
           "scores = [float(answers.row_correct(x, rows[i // G], strict=False))",
           (M + "test_a_truncated_rollout_earns_no_outcome_reward", E2E + "[grpo]")),
    # ------------------------------------------------------------ ropd.py / data.py: resume and data order
    Mutant("optimizer_not_restored", "ropd.py", "--resume loads the weights but not the AdamW state",
           '        dist.load_optimizer(model, opt, ckpt / "optimizer", state["optimizer"], world)\n', "",
           (M + "test_resume_restores_the_optimizer_state",)),
    Mutant("temperature_top_p_swapped", "ropd.py", "--temperature and --top-p swapped on their way to the sampler",
           "temperature=args.temperature, top_p=args.top_p,", "temperature=args.top_p, top_p=args.temperature,",
           (R + "test_temperature_and_top_p_each_reach_where_they_are_used",)),
    Mutant("resume_data_pos_lost", "ropd.py", "--resume restarts the data at position 0 (it re-sees the first prompts)",
           'data_pos=state["data_pos"] if state else 0,', "data_pos=0,",
           (M + "test_resume_restores_the_optimizer_state", R + "test_resume_gives_the_same_weights_and_repays_nothing")),
    Mutant("data_order_not_per_epoch", "data.py",
           "every epoch visits the prompts in the same order (the epoch is not in the seed)",
           'random.Random(f"{seed}-{epoch}").shuffle(order)', 'random.Random(f"{seed}").shuffle(order)',
           ("tests/test_data.py::test_each_epoch_has_its_own_order_and_the_position_says_where",)),
    # ------------------------------------------------------------ rubric.py: the reward (Eqs. 3-4)
    Mutant("points_ignored", "rubric.py", "score = fraction of criteria met: the rubric's points (weights) are ignored",
           "return sum(c.points for c, v in zip(rubric.criteria, judgement) if v) / total if total else 0.0",
           "return sum(1 for c, v in zip(rubric.criteria, judgement) if v) / len(judgement) if total else 0.0",
           (RU + "test_score_is_weighted_pass_rate_recomputed_from_booleans",
            RU + "test_toy_rubric_rewards_showing_the_work",
            E2E + "[ropd]")),
    Mutant("final_score_trusted", "rubric.py",
           "the reward is the judge's own final_score / maximum score, not recomputed from the booleans",
           '    reward: str = "pass-rate"          #', '    reward: str = "final-score"        #',
           (BLIND, "tests/test_rubric.py")),
    Mutant("pool_unshuffled", "rubric.py", "the blind pool is not shuffled: the references always come first, in order",
           "    tagged.sort(key=key)\n", "",
           (RU + "test_blind_pool_is_deterministic_shuffled_and_restorable",
            RU + "test_default_is_one_shared_rubric_and_one_blind_verifier_call_per_group")),
    Mutant("verifier_sighted", "rubric.py",
           "the verifier is always told which answers are the teacher's (author= labels)",
           "sources=sources[i:i + size] if settings.sighted_verifier else None", "sources=sources[i:i + size]",
           (RU + "test_sighted_verifier_labels_the_teachers_answers",
            RU + "test_default_is_one_shared_rubric_and_one_blind_verifier_call_per_group",
            P + "test_verifier_renders_the_rubric_with_categories_and_stays_blind")),
    # ------------------------------------------------------------ prompts.py: untrusted text
    Mutant("quote_not_defused", "prompts.py", "tag-like text inside a block ('</answer>') is left as it is",
           "{_TAG_LIKE.sub(lambda m: '‹' + m.group(1), text)}", "{text}",
           (P + "test_a_rollout_cannot_close_its_block_or_forge_a_reference",
            P + "test_block_keys_cannot_be_predicted_from_inside")),
    Mutant("block_key_constant", "prompts.py", "every prompt's block key is the same: a rollout can close its block",
           r'return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]', 'return "0" * 12',
           (P + "test_a_rollout_cannot_close_its_block_or_forge_a_reference",
            P + "test_block_keys_cannot_be_predicted_from_inside", P + "test_prompts_label_and_strip")),
    # ------------------------------------------------------------ teacher.py: the cache and secrets
    Mutant("cache_key_no_temperature", "teacher.py", "the cache key leaves out the sampling temperature",
           "fields = [self.fingerprint, chat, temperature, max_tokens, index]",
           "fields = [self.fingerprint, chat, max_tokens, index]",
           CACHE),
    Mutant("cache_key_no_index", "teacher.py", "the cache key leaves out the sample index: K references are one text",
           "fields = [self.fingerprint, chat, temperature, max_tokens, index]",
           "fields = [self.fingerprint, chat, temperature, max_tokens]",
           CACHE),
    Mutant("redact_removed", "teacher.py", "redact() returns strings as they are: keys reach logs and the terminal",
           "    if isinstance(obj, str):\n        for key in [os.environ.get(var)",
           "    if isinstance(obj, str):\n        return obj\n        for key in [os.environ.get(var)",
           (H + "test_redact", H + "test_secrets_stay_out_of_files_and_the_terminal",
            T + "test_fatal_errors_stop_at_once_without_leaking_the_key")),
    # ------------------------------------------------------------ answers.py
    Mutant("strict_fallback", "answers.py", "strict extraction falls back to the last number: truncated answers count",
           "    if strict:\n        return None\n    if choice:", "    if choice:",
           (A + "test_strict_needs_an_explicit_answer", A + "test_strict_extraction_has_no_fallback", E2E + "[grpo]")),
    # ------------------------------------------------------------ issue 24: each against an independent oracle
    Mutant("update_at_t1", "grpo.py", "the update's log-probs at temperature 1, pi_old's at T: the ratio is off from the start",
           "logp = forward_logprobs(model, mb, temperature=temperature, device=device)",
           "logp = forward_logprobs(model, mb, temperature=1.0, device=device)",
           (O + "test_the_update_is_the_naive_whole_batch_loss_at_the_temperature",)),
    Mutant("old_logp_at_t1", "ropd.py", "pi_old's recorded log-probs at temperature 1 whatever --temperature says",
           "    return grpo.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask,\n"
           "                                 temperature=temperature,",
           "    return grpo.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask,\n"
           "                                 temperature=1.0,",
           (O + "test_recorded_old_logprobs_are_at_the_sampling_temperature",)),
    Mutant("lopd_teacher_at_t1", "ropd.py", "LOPD's teacher log-probs at temperature 1, the student's at T",
           "adv = grpo.lopd_advantages(teacher_logp, ro.old_logp, ro.completion_mask)",
           "adv = grpo.lopd_advantages(teacher.token_logprobs(ro.input_ids, ro.attention_mask, T, temperature=1.0), "
           "ro.old_logp, ro.completion_mask)",
           (O + "test_lopd_and_exopd_teacher_logprobs_are_at_the_sampling_temperature",)),
    Mutant("adv_scale_dropped", "ropd.py", "--adv-scale never reaches Eq. 6: std is silently none",
           "adv = grpo.group_advantages(rewards.scores, G, scale=scale).view(-1, G)",
           'adv = grpo.group_advantages(rewards.scores, G, scale="none").view(-1, G)',
           (O + "test_adv_scale_std_with_several_groups_and_a_fallback",)),
    Mutant("padding_micro_batch_weighted", "grpo.py", "a rank's padding micro-batch counts in its gradient (weight `scale`, not 0)",
           "yield trim(whole.select(slice(0, 1))).to(device), 0.0", "yield trim(whole.select(slice(0, 1))).to(device), scale",
           (O + "test_uneven_rank_shares_add_up_to_the_one_process_gradient",)),
    Mutant("judge_temperatures_swapped", "ropd.py", "the rubricator samples at the verifier's temperature and vice versa",
           '"rubricator": args.rubricator_temperature, "verifier": args.verifier_temperature,',
           '"rubricator": args.verifier_temperature, "verifier": args.rubricator_temperature,',
           (O + "test_judge_temperatures_reach_their_own_stage",)),
    Mutant("min_references_one", "ropd.py", "--min-references 0 means 1, not K: a group with one of K references is judged",
           "min_references=args.min_references or args.references,", "min_references=args.min_references or 1,",
           (O + "test_a_group_short_of_references_falls_back_and_the_default_asks_for_all_k",)),
    Mutant("keep_last_off_by_one", "ropd.py", "--keep-last N keeps N - 1 checkpoints",
           "for old in own_checkpoints(out)[:-keep_last] if keep_last > 0 else []:",
           "for old in own_checkpoints(out)[:-keep_last + 1] if keep_last > 1 else own_checkpoints(out)[:-1] if keep_last else []:",
           (O + "test_after_resume_the_kl_reference_is_the_initial_student",)),
    Mutant("ref_model_is_the_checkpoint", "ropd.py", "after --resume, pi_ref (KL, ExOPD) is the checkpoint, not the initial student",
           "ref_model, _ = load_policy(args.student, grad_checkpointing=False,",
           "ref_model, _ = load_policy(str(ckpt) if ckpt else args.student, grad_checkpointing=False,",
           (O + "test_after_resume_the_kl_reference_is_the_initial_student",)),
    Mutant("rollout_seed_without_step", "ropd.py", "a rollout's seed ignores the step: every step resamples the same rollouts",
           'hashlib.sha256(f"{seed}/{step}/{prompt}/{j}".encode())', 'hashlib.sha256(f"{seed}/{prompt}/{j}".encode())',
           (O + "test_rollout_seeds_differ_by_step_prompt_and_index",)),
    Mutant("outcome_reward_next_prompt", "ropd.py", "each rollout's outcome is checked against the next prompt's answer",
           "answers.row_correct(x, rows[i // G], strict=True)", "answers.row_correct(x, rows[(i // G + 1) % len(rows)], strict=True)",
           (O + "test_outcome_rewards_are_scored_against_their_own_prompts_answer",)),
    Mutant("keyed_verdicts_in_key_order", "rubric.py", "a judgement keyed by criterion id is read in the judge's key order",
           "        j = [j[i] for i in ids]\n", "        j = list(j.values()) if set(j) == set(ids) else [j[i] for i in ids]\n",
           (O + "test_verdicts_keyed_by_id_land_on_the_rubrics_criteria_and_their_owners",)),
    Mutant("verifier_sees_reasoning", "prompts.py", "the batch verifier is shown each answer's <think> reasoning",
           "texts, rubric_json = [strip_reasoning(a) for a in answers], render_rubric(rubric)",
           "texts, rubric_json = list(answers), render_rubric(rubric)",
           (O + "test_verdicts_keyed_by_id_land_on_the_rubrics_criteria_and_their_owners",)),
    Mutant("verifier_key_without_answers", "prompts.py", "the verifier's block key ignores the answers: a student can learn it",
           "key = block_key(question, rubric_json, *texts)", "key = block_key(question, rubric_json)",
           (O + "test_the_verifiers_block_key_depends_on_its_answers",)),
    Mutant("holistic_partial_group_kept", "rubric.py", "a T-Judge / OVD group with an unscored rollout is kept (that rollout 0)",
           ("ok = all(k in scores for k in keys)", "rewards=[scores[k] if ok else 0.0 for k in keys]"),
           ("ok = any(k in scores for k in keys)", "rewards=[scores.get(k, 0.0) if ok else 0.0 for k in keys]"),
           (O + "test_a_holistic_group_scored_only_in_part_falls_back",)),
    Mutant("local_references_one_seed", "teacher.py", "a local teacher's K references of a prompt share one seed: K copies",
           "row_seeds=[int(key[:15], 16) for _, _, key in chunk])", "row_seeds=[0 for _ in chunk])",
           (O + "test_a_local_teachers_k_references_of_one_prompt_differ",)),
    Mutant("signal_log_ratio_flipped", "eval.py", "the signal analysis's log-ratio is student minus teacher",
           '_mean_over_mask(t_lp - s_lp, cmask)', '_mean_over_mask(s_lp - t_lp, cmask)',
           (O + "test_signal_log_ratio_is_teacher_minus_student",)),
    Mutant("sft_targets_without_eos", "grpo.py", "SFT targets (and every encoded completion) lose their EOS: never learns to stop",
           "token_lists = [t + [eos] for t in token_lists]", "token_lists = [t or [eos] for t in token_lists]",
           (O + "test_sft_targets_are_the_references_with_eos_and_one_step_is_the_naive_nll",)),
    # ------------------------------------------------------------ issue 27: the sampler correction, the early exit
    Mutant("tis_weight_dropped", "grpo.py", "the TIS weight is computed but never multiplied into the loss",
           "pg = pg if tis_weight is None else pg * tis_weight", "pg = pg",
           (O + "test_rollouts_of_another_sampler_weigh_min_of_pi_old_over_pi_sampler_and_the_cap",)),
    Mutant("tis_uncapped", "grpo.py", "the TIS weight is not capped: a sampler that under-rates a token blows it up",
           "return torch.exp(old_logp - sampler_logp).clamp(max=cap).detach()",
           "return torch.exp(old_logp - sampler_logp).detach()",
           (O + "test_rollouts_of_another_sampler_weigh_min_of_pi_old_over_pi_sampler_and_the_cap",)),
    Mutant("tis_ratio_inverted", "grpo.py", "the TIS weight is pi_sampler / pi_old",
           "return torch.exp(old_logp - sampler_logp).clamp(max=cap).detach()",
           "return torch.exp(sampler_logp - old_logp).clamp(max=cap).detach()",
           (O + "test_rollouts_of_another_sampler_weigh_min_of_pi_old_over_pi_sampler_and_the_cap",)),
    Mutant("finished_rows_stay", "grpo.py", "the early-exit loop never drops a finished rollout (every row to the end)",
           "keep = ~torch.isin(nxt, eos)", "keep = torch.ones_like(nxt, dtype=torch.bool)",
           (G + "test_rollouts_leave_the_batch_at_their_eos_and_are_the_tokens_of_hugging_face_s_own_loop",)),
    Mutant("generators_not_filtered", "grpo.py", "dropped rows keep their generators: the others sample with a neighbour's",
           'getattr(p, "keep_rows", lambda k: None)(keep)', "pass",
           (G + "test_rollouts_leave_the_batch_at_their_eos_and_are_the_tokens_of_hugging_face_s_own_loop",)),
]


# ---------------------------------------------------------------------------------------------- harness

def copy_tracked(dest: Path) -> Path:
    """The files git tracks (as they are in the working tree) copied into `dest`."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for f in filter(None, out.decode().split("\0")):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


def apply(m: Mutant, repo: Path) -> str | None:
    """Plant the mutant in `repo`; the reason it is invalid, or None."""
    text = (repo / m.file).read_text()
    for old, new in m.edits():
        if (n := text.count(old)) != 1:
            return f"snippet occurs {n} times: {old.strip().splitlines()[0][:60]!r}"
        text = text.replace(old, new)
    try:
        compile(text, m.file, "exec")
    except SyntaxError as e:
        return f"does not compile: {e}"
    (repo / m.file).write_text(text)
    return None


def pytest(repo: Path, args: list[str], timeout: int, collect: bool = False, threads: int = 0) -> tuple[int | None, str]:
    """Run pytest in `repo` (its own basetemp beside it); (exit code or None on timeout, output).
    `threads` > 0 caps torch's threads: parallel jobs that each use every core slow down by far more
    than their number (measured: a 30 s world build still unfinished after 10 minutes at --jobs 2)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={repo.parent / 'tmp'}",
           *(["--collect-only"] if collect else ["-x", "-rfE"]), *args]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ENV, **({"OMP_NUM_THREADS": str(threads)} if threads else {})},
                            start_new_session=True)
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and anything it started
        proc.communicate()
        return None, ""
    return proc.returncode, out


def run_mutant(m: Mutant, pristine: Path, work: Path, threads: int = 0) -> tuple[str, float, str]:
    """(killed | survived | invalid, seconds, the test that failed or why it is invalid)."""
    start, repo = time.time(), work / m.name / "repo"
    try:
        shutil.copytree(pristine, repo)
        if why := apply(m, repo):
            return "invalid", time.time() - start, why
        rc, out = pytest(repo, m.pytest_args(), m.timeout, threads=threads)
    finally:
        shutil.rmtree(work / m.name, ignore_errors=True)
    secs = time.time() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", out, re.MULTILINE)
    if rc is None:
        return "killed", secs, f"timeout after {m.timeout} s"
    if rc == 1:  # a test failed (2: collection / import error, 4: usage error, 5: nothing selected)
        return "killed", secs, failed[0] if failed else "a test failed"
    if rc == 0:
        return "survived", secs, ""
    return "invalid", secs, f"pytest exit {rc}: {out.strip().splitlines()[-1] if out.strip() else ''}"


def baseline(mutants: list[Mutant], pristine: Path) -> bool:
    """The unmutated copy must pass the union of the selections (a -k selection is collected first)."""
    ids: set[str] = set()
    seen: set = set()
    for m in mutants:
        if (frozenset(m.tests), m.k) in seen:  # the same selection in another order (--fresh)
            continue
        seen.add((frozenset(m.tests), m.k))
        if m.k:
            out = pytest(pristine, m.pytest_args(), 600, collect=True)[1]
            ids |= {ln.strip() for ln in out.splitlines() if ln.startswith("tests/") and "::" in ln}
        else:
            ids |= set(m.tests)
    ids = {i for i in ids if "::" not in i or i.split("::")[0] not in ids}  # a whole file covers its tests
    start = time.time()
    rc, out = pytest(pristine, sorted(ids), 3600)
    summary = out.strip().splitlines()[-1] if out.strip() else "timeout"
    print(f"baseline: the unmutated copy, {len(ids)} selections: {summary} ({time.time() - start:.0f} s)", flush=True)
    if rc != 0:
        print(out[-4000:])
    return rc == 0


# --fresh: the whole suite but the slow, separate checks (test_worlds rebuilds the shipped world;
# test_vllm / test_smollm2 / test_reasoning_gym / test_benchmarks install or load real packages)
FRESH_SUITE = tuple(f"tests/test_{name}.py" for name in (
    "oracles", "grpo", "rubric", "prompts", "answers", "data", "structure", "report", "toy", "gad", "methods",
    "ropd", "teacher", "hardening", "hardening2", "eval", "stack", "distributed"))


# the suite's files that test a module most directly run first (pytest -x stops at the first failure,
# so a killed mutant costs less); every mutant still runs against the whole FRESH_SUITE
FIRST = {"grpo.py": ("grpo",), "rubric.py": ("rubric", "methods"), "prompts.py": ("prompts",),
         "teacher.py": ("teacher", "hardening"), "ropd.py": ("ropd", "methods"), "eval.py": ("eval",),
         "answers.py": ("answers",), "data.py": ("data",), "gad.py": ("gad",), "dist.py": ("distributed",)}
# a test of how fast Ctrl-C stops a process (a 20 s wait) says nothing of these bugs and fails on a
# loaded machine: left out of --fresh
FRESH_DESELECT = "not ctrl_c_stops_at_once"


def fresh_mutants() -> list[Mutant]:
    """tests/mutants_fresh.py's mutants, each against FRESH_SUITE (its module's own files first)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("mutants_fresh", Path(__file__).with_name("mutants_fresh.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def suite(file: str) -> tuple[str, ...]:
        first = [f"tests/test_{name}.py" for name in FIRST.get(file, ())]
        return (*first, *(f for f in FRESH_SUITE if f not in first))
    return [Mutant(d["name"], d["file"], d["bug"], d["old"], d["new"], suite(d["file"]), k=FRESH_DESELECT,
                   timeout=1800) for d in module.FRESH]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="NAME[,NAME...]: run these mutants only")
    ap.add_argument("--list", action="store_true", help="list the mutants (and whether each snippet matches) and exit")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated copy's run (only right after "
                                                              "a passing run of the same selection: say so)")
    ap.add_argument("--fresh", action="store_true", help="the fresh reader's mutants (tests/mutants_fresh.py), "
                                                         "each against the whole suite")
    a = ap.parse_args(argv)
    pool_of = fresh_mutants() if a.fresh else MUTANTS
    names = [m.name for m in pool_of]
    assert len(set(names)) == len(names), "duplicate mutant names"
    chosen = a.only.split(",") if a.only else names
    if unknown := [n for n in chosen if n not in names]:
        ap.error(f"unknown mutant(s) {', '.join(unknown)}; --list shows them")
    mutants = [m for m in pool_of if m.name in chosen]
    if a.list:
        for m in mutants:
            text = (ROOT / m.file).read_text()
            ok = all(text.count(old) == 1 for old, _ in m.edits())
            print(f"{m.name:<26} {m.file:<11} {'' if ok else '[SNIPPET DOES NOT MATCH ONCE] '}{m.bug}\n"
                  f"{'':<38}{' '.join(m.pytest_args())}")
        return 0
    with tempfile.TemporaryDirectory(prefix="ropd-mutants-") as tmp:
        work, start = Path(tmp), time.time()
        pristine = copy_tracked(work / "pristine" / "repo")
        if not a.no_baseline and not baseline(mutants, pristine):
            return 2
        results = {}
        with ThreadPoolExecutor(max(1, a.jobs)) as pool:
            threads = max(1, (os.cpu_count() or 1) // a.jobs) if a.jobs > 1 else 0
            futures = {pool.submit(run_mutant, m, pristine, work, threads): m for m in mutants}
            for f in as_completed(futures):
                results[futures[f].name] = r = f.result()
                print(f"  {futures[f].name:<26} {r[0]:<9} {r[1]:6.1f} s  {r[2]}", flush=True)
    print(f"\n{'mutant':<26} {'result':<9} {'seconds':>7}  caught by (killed) / the bug (survived) / why (invalid)")
    for m in mutants:
        result, secs, detail = results[m.name]
        print(f"{m.name:<26} {result:<9} {secs:7.1f}  {m.bug if result == 'survived' else detail}")
    killed = sum(r[0] == "killed" for r in results.values())
    counts = {k: sum(r[0] == k for r in results.values()) for k in ("survived", "invalid")}
    print(f"\nscore: {killed}/{len(mutants)} killed ({counts['survived']} survived, {counts['invalid']} invalid) "
          f"in {time.time() - start:.0f} s")
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
