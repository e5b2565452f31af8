"""CLIP: the two towers, the temperature and the contrastive loss, checked against references written
out here, across two processes, through the trainer and through saved weights."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from minidiff.models.clip import CLIP, CLIPConfig, clip_loss, contrastive_loss
from minidiff.models.tokenizer import train_bpe
from minidiff.train import TrainConfig, train
from minidiff.weights import load_pretrained, save_weights

VOCAB = 40                       # ids 0–36 words, 37 <start>, 38 <end>, 39 <pad> (the tokenizer's layout)
START, END, PAD = 37, 38, 39


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Tiny models run fastest on one thread (``conftest.one_thread``)."""


def tiny_clip(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=VOCAB, context_length=12, text_width=16, text_layers=2, text_heads=2,
                  image_size=8, channels=(8, 16), groups=4, embed_dim=8)
    return CLIP(CLIPConfig(**{**config, **overrides}))


def caption_ids(words, length=12):
    """One row per caption (a list of word ids): <start> words <end> <pad>…"""
    ids = torch.full((len(words), length), PAD)
    for row, w in enumerate(words):
        ids[row, :len(w) + 2] = torch.tensor([START, *w, END])
    return ids


def random_batch(n, groups=None, seed=0):
    """n pictures with captions; pairs of the same group share their caption."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.arange(n) if groups is None else torch.as_tensor(groups)
    words = {int(k): torch.randint(0, START, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
             for k in groups.unique()}
    batch = {"image": torch.rand(n, 3, 8, 8, generator=g) * 2 - 1,
             "ids": caption_ids([words[int(k)] for k in groups])}
    return batch | {"group": groups}


def reference_loss(u, w, scale, groups):
    """Symmetric InfoNCE with soft targets, in plain Python loops: row i's target is uniform over its
    positives {j : groups[j] == groups[i]}, and the same down each column."""
    n = len(u)
    s = [[scale * float(u[i] @ w[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for direction in ("image→text", "text→image"):
        for i in range(n):
            scores = s[i] if direction == "image→text" else [s[j][i] for j in range(n)]
            log_z = math.log(sum(math.exp(v) for v in scores))
            positives = [j for j in range(n) if groups[j] == groups[i]]
            total += -sum(scores[j] - log_z for j in positives) / len(positives)
    return total / (2 * n)


def unit(n, dim=8, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ----------------------------------------------------------------------------- the towers

@pytest.mark.parametrize("tower", ["transformer", "bag_of_words"])
def test_every_output_has_its_shape_with_the_bpe_tokenizer(tower):
    tokenizer = train_bpe(["a large red circle", "a small blue square, top left", "a red square"], 300)
    model = CLIP(CLIPConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, end_id=tokenizer.end_id,
                            context_length=32, text_tower=tower, text_width=16, text_layers=1, text_heads=2,
                            image_size=16, channels=(8, 16, 16), groups=4, embed_dim=8))
    ids = tokenizer(["a red circle", "a small blue square, top left", "square"], context_length=32)
    states, mask = model.text_states(ids)
    assert states.shape == (3, 32, 16) and torch.equal(mask, tokenizer.padding_mask(ids))
    assert torch.equal(model.end_positions(ids), tokenizer.end_positions(ids))
    assert model.encode_text(ids).shape == (3, 8)
    assert model.encode_image(torch.zeros(5, 3, 16, 16)).shape == (5, 8)
    assert model(torch.zeros(5, 3, 16, 16), ids).shape == (5, 3)
    out = clip_loss(model, {"image": torch.zeros(3, 3, 16, 16), "ids": ids})
    assert {k: v.shape for k, v in out.items()} == {"loss": (), "accuracy": (), "temperature": ()}


@pytest.mark.parametrize("tower", ["transformer", "bag_of_words"])
def test_embeddings_have_unit_norm(tower):
    model, batch = tiny_clip(text_tower=tower), random_batch(4)
    for embeddings in (model.encode_text(batch["ids"]), model.encode_image(batch["image"] * 5)):
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4))


def test_a_later_token_does_not_change_earlier_states():
    model, k = tiny_clip(), 4
    ids = caption_ids([[1, 2, 3, 4, 5, 6, 7, 8]])
    changed = ids.clone()
    changed[0, k + 1] = 30
    before, after = model.text_states(ids)[0], model.text_states(changed)[0]
    torch.testing.assert_close(after[:, :k + 1], before[:, :k + 1])
    assert not torch.allclose(after[:, k + 1], before[:, k + 1])


@pytest.mark.parametrize("tower", ["transformer", "bag_of_words"])
def test_more_padding_does_not_change_the_pooled_embedding(tower):
    model, words = tiny_clip(text_tower=tower), [[5, 6, 7], [1, 2, 3, 4, 5, 6]]
    short, long = caption_ids(words, length=8), caption_ids(words, length=12)
    torch.testing.assert_close(model.encode_text(long), model.encode_text(short), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.text_states(long)[0][:, :8], model.text_states(short)[0], rtol=1e-5, atol=1e-6)


def test_pooling_reads_the_state_at_the_end_token():
    model = tiny_clip()
    ids = caption_ids([[1], [2, 3, 4], [5, 6, 7, 8, 9, 10]])
    assert model.end_positions(ids).tolist() == [2, 4, 7]
    states, _ = model.text_states(ids)
    at_end = states[torch.arange(3), torch.tensor([2, 4, 7])]
    torch.testing.assert_close(model.encode_text(ids), F.normalize(model.text_projection(at_end), dim=-1))
    after_end = ids.clone()
    after_end[ids == PAD] = 11  # anything after <end> is unseen by it: the attention is causal
    torch.testing.assert_close(model.encode_text(after_end), model.encode_text(ids))
    before_end = ids.clone()
    before_end[:, 1] = 12
    assert not torch.allclose(model.encode_text(before_end), model.encode_text(ids))


def test_temperature_starts_at_0_07_and_its_inverse_is_clamped_at_100():
    model = tiny_clip()
    assert model.inverse_temperature().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.inverse_temperature().item() == pytest.approx(100.0)
    clip_loss(model, random_batch(4))["loss"].backward()
    assert model.logit_scale.grad.item() == 0.0  # pinned at the cap
    assert clip_loss(model, random_batch(4))["temperature"].item() == pytest.approx(0.01)


@pytest.mark.parametrize("tower", ["transformer", "bag_of_words"])
def test_bag_of_words_ignores_word_order_and_the_transformer_does_not(tower):
    model = tiny_clip(text_tower=tower)
    ids = caption_ids([[3, 9, 14, 21, 2], [3, 14, 9, 2, 21], [2, 21, 14, 9, 3]])  # the same words, reordered
    embeddings = model.encode_text(ids)
    same = [torch.allclose(embeddings[0], e, atol=1e-6) for e in embeddings[1:]]
    assert same == ([True, True] if tower == "bag_of_words" else [False, False])


def test_gradients_reach_both_towers_and_the_temperature():
    for tower in ("transformer", "bag_of_words"):
        model = tiny_clip(text_tower=tower)
        clip_loss(model, random_batch(6, groups=[0, 0, 1, 2, 3, 3]))["loss"].backward()
        silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert silent == [], f"{tower}: no gradient reaches {silent}"


# ----------------------------------------------------------------------------- the loss

def test_one_positive_loss_equals_cross_entropy_on_the_similarity_matrix_and_loops():
    u, w, scale = unit(6), unit(6, seed=1), torch.tensor(7.0)
    s = scale * u @ w.T
    by_hand = (F.cross_entropy(s, torch.arange(6)) + F.cross_entropy(s.T, torch.arange(6))) / 2
    loss = contrastive_loss(u, w, scale)["loss"]
    torch.testing.assert_close(loss, by_hand)
    assert loss.item() == pytest.approx(reference_loss(u, w, 7.0, list(range(6))), rel=1e-5)


def test_repeated_groups_give_the_soft_target_loss():
    u, w, groups = unit(7), unit(7, seed=1), [0, 1, 0, 2, 1, 0, 3]
    loss = contrastive_loss(u, w, torch.tensor(5.0), torch.tensor(groups))["loss"]
    assert loss.item() == pytest.approx(reference_loss(u, w, 5.0, groups), rel=1e-5)
    assert loss.item() != pytest.approx(reference_loss(u, w, 5.0, list(range(7))), rel=1e-3)


def test_distinct_groups_give_the_plain_diagonal_loss():
    u, w, scale = unit(5), unit(5, seed=1), torch.tensor(3.0)
    plain = contrastive_loss(u, w, scale)
    relabelled = contrastive_loss(u, w, scale, torch.tensor([7, 3, 0, 11, 4]))
    torch.testing.assert_close(relabelled["loss"], plain["loss"])
    torch.testing.assert_close(relabelled["accuracy"], plain["accuracy"])


def test_with_repeated_captions_scores_are_perfect_only_when_positives_outrank_negatives():
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    matched = F.one_hot(groups, 8).float()  # each picture and caption sits on its group's axis
    perfect = contrastive_loss(matched, matched, torch.tensor(100.0), groups)
    assert perfect["accuracy"].item() == 1.0
    assert perfect["loss"].item() == pytest.approx((2 * math.log(2) + 3 * math.log(3)) / 6, rel=1e-6)
    diagonal = contrastive_loss(matched, matched, torch.tensor(100.0))  # there a twin's caption is a miss
    assert diagonal["accuracy"].item() < 1
    for seed in range(5):  # accuracy is the share of rows and columns whose best positive beats every negative
        u, w = unit(6, seed=seed), unit(6, seed=seed + 10)
        s, positive = u @ w.T, groups[:, None] == groups[None, :]
        wins = [(s[i][positive[i]].max() > s[i][~positive[i]].max()).item() for i in range(6)]
        wins += [(s[:, j][positive[:, j]].max() > s[:, j][~positive[:, j]].max()).item() for j in range(6)]
        accuracy = contrastive_loss(u, w, torch.tensor(10.0), groups)["accuracy"].item()
        assert accuracy == pytest.approx(sum(wins) / 12)


def _rank(rank, folder, batches):
    """One of two gloo ranks: the loss on its slice (rank::2, as the trainer slices) of each global
    batch, then the gradients averaged over ranks, as the trainer averages them."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    results = []
    for batch in batches:
        model = tiny_clip()
        out = clip_loss(model, {k: v[rank::2] for k, v in batch.items()})
        out["loss"].backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        for g in grads.values():
            dist.all_reduce(g)
            g /= 2
        results.append({"grads": grads, **{k: v.detach() for k, v in out.items()}})
    torch.save(results, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    spanning = random_batch(8, groups=[0, 0, 1, 2, 2, 3, 4, 1])  # groups 0, 1 and 2 cross the ranks
    distinct = random_batch(8, seed=1)
    del distinct["group"]
    batches = [spanning, distinct]
    mp.spawn(_rank, args=(str(tmp_path), batches), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for i, batch in enumerate(batches):
        model = tiny_clip()
        single = clip_loss(model, batch)
        single["loss"].backward()
        for rank in ranks:
            for name, p in model.named_parameters():
                torch.testing.assert_close(rank[i]["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        for key in ("loss", "accuracy"):  # what the trainer logs: the mean over ranks
            assert (ranks[0][i][key] + ranks[1][i][key]).item() / 2 == pytest.approx(single[key].item(), rel=1e-5)


# ----------------------------------------------------------------------------- training and saving

class Captioned(torch.utils.data.Dataset):
    """Pictures of one flat colour per group, with that group's caption."""

    def __init__(self, n=64, groups=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        group = torch.arange(n) % groups
        colours = torch.rand(groups, 3, 1, 1, generator=g) * 2 - 1
        words = [torch.randint(0, START, (3,), generator=g).tolist() for _ in range(groups)]
        images = colours[group] + 0.1 * torch.randn(n, 3, 8, 8, generator=g)
        self.tensors = {"image": images, "ids": caption_ids([words[k] for k in group]), "group": group}

    def __len__(self):
        return len(self.tensors["group"])

    def take(self, indices):
        return {k: v[indices] for k, v in self.tensors.items()}


def test_the_trainer_lowers_the_loss_on_a_toy_set():
    config = TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=3, ema_decay=None, device="cpu",
                         progress=False, log_every=5)
    history = train(tiny_clip(), clip_loss, Captioned(), config).history
    assert history[-1]["loss"] < history[0]["loss"] - 0.5, [h["loss"] for h in history]
    assert history[-1]["accuracy"] > history[0]["accuracy"]
    assert min(h["loss"] for h in history) >= math.log(4) - 1e-3  # four positives per row: at best log 4


def test_a_saved_clip_is_rebuilt_from_its_config(tmp_path):
    model = tiny_clip(text_tower="bag_of_words")
    save_weights(model, "clip_tiny", directory=tmp_path, recipe="pytest", data="none", steps=0, wall_time_s=0.0)
    loaded = load_pretrained("clip_tiny", directory=tmp_path)
    assert loaded.config == model.config
    batch = random_batch(3)
    torch.testing.assert_close(loaded(batch["image"], batch["ids"]), model.eval()(batch["image"], batch["ids"]))
