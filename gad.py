"""gad.py - the GAD baseline of §3.1 (Tables 1 and 3): Generative Adversarial Distillation
(Ye et al., arXiv 2511.10643). The student is the generator; a discriminator learns to tell the
teacher's answers from the student's rollouts, and its score of a rollout is the rollout's reward,
so the reward moves with the student (on-policy, black-box: the teacher gives text only).

    Discriminator    a copy of the initial student with a scalar head on the hidden state of the
                     sequence's last token: D(x, y) in R
    bradley_terry    GAD's loss, -log sigmoid(D(x, y_teacher) - D(x, y_student)), averaged over
                     every (reference, rollout) pair of a prompt, then over the prompts
    GAD.step         score the step's rollouts (the reward), then one discriminator update on the
                     step's references vs rollouts

What we chose where the GAD paper leaves room or the ROPD paper gives nothing: the discriminator
is the student's architecture and initial weights (as GAD: initialised from the student) with a
zero-initialised linear head on the last token's final hidden state; its optimizer is AdamW with
the student's betas and weight decay, `lr` its own (default: the student's), gradient-norm clip
1.0; one discriminator update per training step, after the rewards are read (the generator is
scored by the discriminator it has not yet seen update); the reward is the raw score D(x, y)
(GRPO centres it per group). GAD's warm-up stage (generator SFT and discriminator pre-training
before the adversarial phase) is not implemented. Both sides are scored from their text, encoded
the same way (prompt through the chat template, then the text and EOS), so token-level artefacts of
sampling cannot tell them apart.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

import grpo


class Discriminator(torch.nn.Module):
    """D(x, y): the student's transformer (a copy) and a scalar head on the last token's state."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.body = getattr(lm, "base_model", lm)  # the transformer without its LM head
        self.head = torch.nn.Linear(lm.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy: torch.nn.Module) -> "Discriminator":
        """GAD's initialisation: a copy of the (initial) student; the student itself is not shared."""
        lm = copy.deepcopy(policy)
        lm.requires_grad_(True)
        return cls(lm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        h = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(h[torch.arange(len(last), device=h.device), last].float()).squeeze(-1)


def bradley_terry(d_teacher: torch.Tensor, d_student: torch.Tensor) -> torch.Tensor:
    """GAD's discriminator loss for one prompt: -log sigmoid(D(teacher) - D(student)), over every
    (reference, rollout) pair (a Bradley-Terry preference of the teacher's answer)."""
    return -F.logsigmoid(d_teacher[:, None] - d_student[None, :]).mean()


class GAD:
    """The discriminator, its optimizer and how texts reach it."""

    def __init__(self, policy: torch.nn.Module, tok, lr: float, *, betas=(0.9, 0.999), weight_decay: float = 0.01,
                 max_tokens: int = 8192, template_kwargs: dict | None = None, device=None, batch: int = 16):
        self.tok, self.max_tokens, self.template = tok, max_tokens, dict(template_kwargs or {})
        self.device = device or next(policy.parameters()).device
        self.disc = Discriminator.from_policy(policy).to(self.device)
        self.opt = torch.optim.AdamW(self.disc.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        self.batch = batch

    def encode(self, chats: list, texts: list[str]):
        """(input ids, attention mask, index of each sequence's last token): the prompt left-padded
        through the chat template, then the text and EOS."""
        p_ids, p_mask = grpo.encode_prompts(self.tok, chats, self.template)
        c_ids, c_mask = grpo.encode_completions(self.tok, texts, self.max_tokens)
        last = p_ids.shape[1] - 1 + c_mask.sum(1)
        return torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), last

    def scores(self, chats: list, texts: list[str], grad: bool = False) -> torch.Tensor:
        """D(x, y) for each (chat, text) pair, `batch` at a time."""
        out = []
        for s in range(0, len(texts), self.batch):
            ids, mask, last = self.encode(chats[s:s + self.batch], texts[s:s + self.batch])
            with torch.set_grad_enabled(grad), grpo.autocast(self.device):
                out.append(self.disc(ids.to(self.device), mask.to(self.device), last.to(self.device)))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def update(self, chats: list, references: list[list[str]], rollouts: list[list[str]]) -> dict:
        """One discriminator step (GAD's loss, bradley_terry, averaged over the prompts that have
        references) with grad-norm clip 1.0. Returns its loss and how often D ranked a teacher
        answer above a rollout."""
        self.disc.train()
        groups = [(c, r, s) for c, r, s in zip(chats, references, rollouts) if r and s]
        if not groups:
            return {}
        self.opt.zero_grad(set_to_none=True)
        losses, wins = [], []
        for chat, refs, outs in groups:
            d = self.scores([chat] * (len(refs) + len(outs)), list(refs) + list(outs), grad=True)
            dt, ds = d[:len(refs)], d[len(refs):]
            loss = bradley_terry(dt, ds) / len(groups)
            loss.backward()
            losses.append(float(loss.detach()) * len(groups))
            wins.append(float((dt[:, None] > ds[None, :]).float().mean()))
        torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 1.0)
        self.opt.step()
        return {"gad_loss": sum(losses) / len(losses), "gad_teacher_wins": sum(wins) / len(wins)}

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def save(self, folder: Path):
        torch.save(self.state_dict(), Path(folder) / "discriminator.pt")

    def load(self, folder: Path):
        """The discriminator of a checkpoint (weights_only: the file runs no code)."""
        st = torch.load(Path(folder) / "discriminator.pt", weights_only=True, map_location=self.device)
        self.disc.load_state_dict(st["disc"])
        self.opt.load_state_dict(st["opt"])
