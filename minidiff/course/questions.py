"""Questions that ask the student to predict, interpret or choose — and then check the answer.

A chapter asks in its text ("Before you run the next cell: which block size leaves the 7 readable?
a) 2, b) 7, c) 14"); the student writes an answer and runs ``check_answer("mosaic_block", my_answer)``.
A right answer hears why it is right; a wrong one hears the hint written for *that* choice — why it is
tempting, and what to look at — so every wrong answer gets its own help. Some answers are measured in
the notebook itself ("which guidance scale gives the lowest FID? run it and see"): the chapter passes
what it measured, ``check_answer("best_guidance", my_answer, measured=best)``, and the check compares.

Each chapter's questions are in this file, in its own section; the answers live here, out of the
chapters' code, like the reference solutions of the coding exercises (``minidiff.course.solutions``).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    options: dict          # each allowed answer (a short string, e.g. "a") → the hint for choosing it wrongly
    answer: str | None     # the right option; None: measured in the notebook (``check_answer(…, measured=…)``)
    why: str               # said when the answer is right: what it shows


QUESTIONS: dict[str, Question] = {}


def question(name: str, *, options: dict, answer: str | None = None, why: str) -> Question:
    """Add a question to the bank (each chapter's section below calls this)."""
    if name in QUESTIONS:
        raise ValueError(f"question {name!r} is defined twice")
    if answer is not None and answer not in options:
        raise ValueError(f"question {name!r}: its answer {answer!r} is not one of its options")
    QUESTIONS[name] = Question(options, answer, why)
    return QUESTIONS[name]


def check_answer(name: str, answer, measured=None) -> bool:
    """Print one verdict on the student's ``answer`` to question ``name`` and return whether it is right.
    ``measured``: for a question answered by an experiment in the notebook, the option it found."""
    q = QUESTIONS[name]
    choices = ", ".join(repr(option) for option in q.options)
    if answer is None:
        print(f"… {name}: not answered yet — set your answer to one of {choices}, then run this cell again.")
        return False
    key = str(answer).strip().lower()
    if key not in q.options:
        print(f"✗ {name}: {answer!r} is not one of the choices ({choices}).")
        return False
    right = q.answer if q.answer is not None else measured
    if right is None:
        raise ValueError(f"question {name!r} is answered by a measurement: pass measured=…")
    if right not in q.options:
        raise ValueError(f"question {name!r}: the measured answer {right!r} is not one of its options")
    if key != right:
        print(f"✗ {name}: not {key!r}. Hint: {q.options[key]}")
        return False
    print(f"✓ {name}: right. {q.why}")
    return True


# ----------------------------------------------------------------------------- chapter 00

question(
    "mosaic_or_noise",
    options={
        "a": "The mosaic looks tidier, but each 7×7 tile is now one number: its 49 pixels were averaged, and "
             "countless different pictures have that same average. The next cell makes three of them — knowing "
             "exactly what was done (averaging) does not tell you which one it was.",
        "b": "(the right answer)",
        "c": "The noisy 7 looks worse, but nothing in it is lost: every pixel is still there, scaled by "
             "√(1 − a), with noise added on top. Take that noise away and divide by √(1 − a), and the 7 is back "
             "to the last pixel (next cell).",
    },
    answer="b",
    why="The blend √(1 − a)·x + √a·ε keeps a scaled copy of every pixel, so whoever knows the noise ε gets x "
        "back exactly: x = (x_t − √a·ε) / √(1 − a). Guessing that noise is a diffusion model's whole job "
        "(chapter 05). A mosaic has averaged the detail away: there is nothing left to guess it from.",
)

# ----------------------------------------------------------------------------- chapter 01

question(
    "ae_random_codes",
    options={
        "a": "A bigger code helps the decoder rebuild a *real* digit, whose code the encoder wrote. A random "
             "code was written by nobody: with more numbers there are only more ways for it to miss the thin "
             "region where real codes lie (section 4's scatter). Compare the FID bars: 392 numbers score worst.",
        "b": "(the right answer)",
        "c": "The decoder is a smooth function, not a look-up table of training digits: it cannot recall a "
             "digit from a code that is no digit's code. Random codes land beside and between the real ones, "
             "where it has learned nothing, and there it draws smudges.",
    },
    answer="b",
    why="Random codes decode to smudges for every code size, and the biggest code scores the worst FID. A code "
        "that is good for rebuilding is not a space we can sample from: nothing made the codes fill a region "
        "we know how to draw from. That is what the VAE (chapter 02) adds.",
)

# ----------------------------------------------------------------------------- chapter 02

question(
    "vae_map_edge",
    options={
        "a": "The decoder is a smooth function of the code: a step beyond the data it keeps drawing much what it "
             "draws at the edge, it does not switch to noise. Look at the map's border: are its pictures blank?",
        "b": "Inside the circle the digits sit in regions, and the regions of 2, 3, 5, 8 lie in the crowded "
             "middle, surrounded by others. Walking outwards you leave the map only through the outer regions.",
        "c": "(the right answer)",
    },
    answer="c",
    why="Out there the decoder extrapolates the regions at the map's edge (here the 0s, 1s, 4s and 7s), with "
        "strokes that thin and break as the codes move out; no new digit lives there. A VAE's promise holds "
        "only where its prior N(0, I) puts codes, and that is where its samples come from.",
)

# ----------------------------------------------------------------------------- chapter 03

question(
    "gan_low_d_loss",
    options={
        "a": "In a game one player's low loss is the other's defeat. L_D ≈ 0 means D tells every forgery from a "
             "real digit with certainty, σ(D(G(z))) ≈ 0: G is losing every round, and the run below shows it can "
             "stop learning altogether.",
        "b": "(the right answer)",
        "c": "G's loss is computed through D: −log σ(D(G(z))) is large exactly when D is sure. The two losses are "
             "two views of one game, and a D loss near 0 comes with a G loss that is large and climbing.",
    },
    answer="b",
    why="A healthy game keeps the judge unsure: its loss stays well above 0 and σ(D(G(z))) well above 0. When D "
        "wins outright, G's pictures are easy to spot, and if G's own output is stuck (as in the run below, "
        "where its tanh saturates) its gradient vanishes: the game is over, though one loss looks perfect.",
)

# ----------------------------------------------------------------------------- chapter 04

question(
    "cosine_half",
    options={
        "a": "That is the linear schedule: ᾱ_t is the product of all the (1 − β_s) so far, and its β grows "
             "steadily from the first step, so half the variance is gone by t ≈ 260. The cosine schedule was "
             "designed to fade gently at the start — see where its curve crosses ½.",
        "b": "Halfway in steps would be halfway in variance if ᾱ fell like a cosine² — the measurement says "
             "this schedule does something else: read off where its curve crosses ½.",
        "c": "Late in the chain the digit *looks* gone, but looking gone comes long after half its variance is "
             "gone: at ᾱ = ½ a digit is still easy to read (see the strips below). Under cosine, ᾱ falls slowly "
             "at the start and at the end, and fastest in the middle.",
    },
    why="The cosine schedule makes √ᾱ_t follow a quarter of a cosine wave, cos(π/2 · t/T) (plus a tiny offset), "
        "and cos² is ½ at 45°, halfway: t ≈ T/2 = 500. Half the signal's variance left at half the steps — "
        "the linear schedule gets there at t ≈ 260 and then spends a third of its steps on nearly pure noise.",
)

# ----------------------------------------------------------------------------- chapter 05

question("best_guidance", options={
    "0": "w = 0 ignores the label and uses only the null-label branch — which trained on one example in ten: "
         "the weakest model in the sweep",
    "1": "w = 1 is the plain conditional model, already near 100 % obedient; here a little more guidance "
         "made the set more typical without costing much variety",
    "2": "past w = 1 every extra unit of guidance makes each digit more typical and the set less varied — "
         "FID counts the variety it loses",
    "3": "w = 3 is the shipped default because it is obedient and clean, not because it scores the best FID: "
         "FID counts the variety that guidance takes away",
    "5": "strong guidance draws each digit the most typical way it knows: obedient, but the set loses its "
         "variety, and FID counts variety"},
    why="Guidance buys obedience with variety: the least guidance that reads the label best scores best.")

# ----------------------------------------------------------------------------- chapter 06

question("fresh_noise", options={
    "a": "the reverse: DDPM and Euler ancestral are first order — their steps are the *least* accurate (section 5 "
         "measures it) — and yet they score better",
    "b": "(the right answer)",
    "c": "the seed moves an FID of 2,000 samples by about 1, but the gap here is 4–5, on every seed the README "
         "lists: it is the method, not the luck",
}, answer="b", why="The ODE solvers follow the network's answers faithfully, errors included, to the end; a "
   "stochastic sampler throws part of the picture away at every step and draws it afresh, which washes the "
   "network's small errors out. On large, well-trained networks the two families meet.")

# ----------------------------------------------------------------------------- chapter 07

question("latent_loses_first", options={
    "a": "a colour fills whole latent cells: dozens of the 256 numbers carry it, so a small error in one of "
         "them hardly moves it. Look at the bars: which attribute is not at 100 %?",
    "b": "the outline is the finest thing in the picture, but look at the bars: another attribute is read "
         "wrong more often",
    "c": "the position is where the cells stop looking like the background: many cells agree on it, so it "
         "survives. Look at the bars: which attribute is not at 100 %?",
}, why="A shape is told apart by its outline alone, and the outline of a small shape runs through one or two "
   "latent cells: the decoder redraws it from a handful of numbers and rounds the corners off first — the "
   "zoom below shows where.")

question("unscaled_half_noised", options={
    "a": "more than half signal needs latents spread wider than the noise (std > 1); these are narrower — read "
         "the std printed above",
    "b": "exactly half holds only for data of unit spread, which is what the scaling factor is for: without "
         "it the signal's variance at ᾱ = ½ is ½·std², against ½ of noise",
    "c": "less than half signal needs latents narrower than the noise (std < 1); these spread wider — read the "
         "std printed above",
}, why="At ᾱ_t = ½ the signal's variance is ½·std² and the noise's ½: the schedule's 'half-noised' is half only "
   "when std = 1. Without s every step of the schedule means another noise level than the one it was planned "
   "for — the curves below show by how much.")

# ----------------------------------------------------------------------------- chapter 08

question("bow_binding", options={
    "a": "both towers learned from the same pictures and captions, so the same score is tempting — but the bag "
         "of words only averages the caption's token embeddings, and the two captions hold the same tokens. "
         "Compare the bag of words' two cosines under each picture: what is left of the order once it averages?",
    "b": "half is what a coin toss scores, and a coin needs the two scores to differ a little, one way or the "
         "other. Look at the bag of words' two cosines under each picture: they are equal, and a tie counts as "
         "a miss",
    "c": "the swapped caption holds the very same tokens, so its mean should be the same and every picture tie; "
         "if the measurement says otherwise, print the two captions' token ids: the tower sees nothing but them",
}, why="The bag of words is blind to order: 'a red circle against a blue background' and 'a blue circle against "
   "a red background' hold the same tokens, so they have the same mean, the same embedding and the same score "
   "on every picture — a tie each time, not the coin toss's 50 %, which would need some difference to break "
   "the ties. The only wins are where English grammar changes a word: 'an orange circle' but 'a red circle', "
   "and 'an' is a token the bag does see (about a tenth of the English pairs; none in Chinese, which has no "
   "articles). The transformer knows where each word stands (a position embedding on every token, read in "
   "order by its causal attention), so 'red' before 'circle' and 'red' before 'background' differ to it: it "
   "can bind each colour to its object.")

question("temperature_sharpens", options={
    "a": "dividing by a smaller τ multiplies every score by a larger 1/τ: the gaps between the scores grow, and "
         "the softmax turns gaps into ratios e^(gap/τ). Compute one row's softmax at 1/τ = 14.3 and at 100 and "
         "compare the largest weight",
    "b": "(the right answer)",
    "c": "the order is kept, so the argmax — the caption CLIP picks — is the same; but a softmax is not "
         "scale-invariant: the ratio of two weights is e^((s_i − s_j)/τ), which depends on τ. Only adding the "
         "same number to every score leaves a softmax unchanged",
}, answer="b", why="Two captions' weights stand in the ratio e^((s_i − s_j)/τ): a smaller τ stretches every gap, "
   "so the best caption takes nearly all the weight. Cosines alone are too close together for a softmax: at "
   "1/τ = 1, a caption at cosine 1 among 255 at −1 would get under 3 % of the weight. Learning τ lets training "
   "choose how sharp the matching game is, and the cap at 1/τ = 100 keeps the logits from growing until "
   "training becomes unstable.")

question("clip_at_generation", options={
    "a": "CLIP learned from pictures but keeps none of them: its weights are far too few numbers to store its "
         "training set, and the denoiser starts every picture from pure noise. Nothing is looked up",
    "b": "(the right answer)",
    "c": "CLIP's text tower draws nothing: its output is one vector per token, numbers with no pixels. The first "
         "rough picture is the denoiser's own early steps from pure noise (chapters 05–06); CLIP's vectors "
         "reach it at every step",
}, answer="b", why="At generation Stable Diffusion runs only CLIP's text tower: it turns the prompt into one "
   "vector per token (77 × 768 numbers in Stable Diffusion 1.x), and the denoiser reads them through "
   "cross-attention at every step of the sampling loop, so the prompt steers how the noise is taken away. "
   "CLIP's image tower is not used at all, and no picture is looked up: every picture is drawn from noise.")

# ----------------------------------------------------------------------------- chapter 09

question("guidance_variety", options={
    "a": "guidance does not add randomness: the seeds start from the same noises as before, and every step is now "
         "pulled harder towards what the prompt asks. Look at the guidance row and at the variety curve: which way "
         "does it go from s = 1 to s = 7.5?",
    "b": "it is tempting — guidance pushes every seed the same way — but the measurement did not find it here. "
         "Compare the variety curve's two ends, and look at the pictures at s = 1: are they wrong more often?",
    "c": "the seeds still differ, but s multiplies the prompt's pull at every one of the 20 steps, and a stronger "
         "pull leaves a seed less room of its own. Compare the variety curve's two ends",
}, why="Classifier-free guidance trades variety for following the prompt: every step moves each picture s times as "
   "far along the prompt's direction, towards the pictures the model finds most typical of it (Ho & Salimans, 2022, "
   "measured the same trade on ImageNet: sharper, more alike, and past a point further from the real pictures). "
   "Without guidance (s = 1) some seeds wander off the prompt — a wrong colour or shape is variety too — and at "
   "large s the pictures of one prompt crowd together; the judge-FID curve shows what the crowding costs in realism.")

question("negative_red", options={
    "a": "the negative prompt takes the empty prompt's place in ε̂ = ε(neg) + s · (ε(prompt) − ε(neg)): the prompt's "
         "own prediction still asks for red, and 'red' in the negative only takes red out of the *direction* that "
         "guidance amplifies. Count the red circles in the row",
    "b": "the prompt still says 'red', but at s = 3 the picture is steered by 3 · ε(prompt) − 2 · ε('red'): the "
         "negative enters with the weight −2. Count the red circles in the row",
    "c": "a negative prompt is not noise: it is another prompt's prediction, and the positive prompt still carries "
         "s times its weight. Look at the row: what do the pictures show?",
}, why="Guidance extrapolates from the negative prompt's prediction through the prompt's. What both share — here "
   "'red' — cancels out of the direction, so it is no longer amplified, while what only the prompt says (a circle, "
   "on blue) is. A negative prompt removes best what the prompt leaves open: 'large' as the negative of a prompt "
   "that names no size makes every circle small. That is how Stable Diffusion users use it — 'blurry, extra "
   "fingers' — never to contradict their own prompt.")

question("held_out_prompts", options={
    "a": "a model that could only repeat its training pictures would fail here — but the U-Net never learned 'white "
         "circle on green' as one thing: cross-attention reads 'white', 'circle' and 'green … background' as "
         "separate tokens, each seen thousands of times in other company. Look at the bars",
    "b": "compare each bar with the dashed line of the training compositions: at least one held-out composition "
         "falls well below it. Generalisation is not all-or-nothing; look at what the judge reads in the worst "
         "one's pictures",
    "c": "look for a bar below one half and compare the overall rate with the dashed line. If no bar is that low "
         "and the rates are close, nothing failed 'often' — a miss in one picture of eight is the seed's doing, not "
         "the words'; if most bars are low, the failure is general, not in between",
}, why="Every held-out composition is made of words the model knows, in a combination no training picture showed. "
   "Where it draws them as well as the training compositions it has learned the attributes apart — to compose, "
   "not to recall; where a composition fails, the judge's reading printed below the figure says how — which "
   "attribute it drew otherwise, and as what. Measured on held-out compositions, this is the test of "
   "generalisation that a score on the training compositions cannot give.")

# ----------------------------------------------------------------------------- chapter 10

question("strength_strip", options={
    "a": "compare the numbers down two neighbouring columns: is every number in the column of the larger s above "
         "every number in the column of the smaller s?",
    "b": "it can happen — each draw of the noise is one chance — but here every run at a larger s ended further from "
         "the drawing than every run at the next smaller s: compare two neighbouring columns",
    "c": "the strength decides where the walk starts: at s = 0.1 the picture is still nearly the drawing, at s = 0.9 "
         "almost nothing of it is left. Compare the first and the last column of the strip",
}, why="The strength sets how much noise is added, and so how much of the drawing survives *on average*: the mean "
   "distance grows with s. One run is one draw of that noise, and the runs of neighbouring strengths overlap — a "
   "lucky draw at the larger s keeps more of the drawing than an unlucky one at the smaller. The article says it "
   "well: 'this, too, is a matter of probability'. A single picture never tells you which strength made it.")

question("choose_strength", options={
    "a": "at s = 0.2 the outline stays, but look at the colour: only the last, finest steps are re-run, and in few "
         "pictures does the new colour appear. Count the pictures with both",
    "b": "look at the row of s = 0.5 and at the share printed for it: how many pictures change the colour *and* "
         "keep the outline?",
    "c": "at s = 0.9 the colour is as asked, but the walk starts from nearly pure noise: the shape, its size and "
         "place are drawn anew from the prompt alone. Compare the object's IoU with the input at s = 0.9",
}, why="The measurement picks the strength with the most pictures that have the new colour *and* the old outline. "
   "Look at how many that is: at every strength most pictures get one or the other, not both. In an 8 × 8 latent "
   "the object's colour and its outline are written into the same few numbers, so the noise that frees the one "
   "frees the other, and img2img's single knob cannot separate them here (the benchmark's curve shows the same "
   "on 1,000 pictures). Section 10's DDIM inversion keeps more of the outline; chapter 11's ControlNet holds it "
   "fixed at any strength.")

question("repaint_resampling", options={
    "a": "80 steps make each step smaller, but every step still meets the kept part only once, through fresh noise. "
         "Compare the two 80-call rows' object IoU: which is ahead here, and by how much?",
    "b": "that is RePaint's finding — but compare the two 80-call rows' object IoU here: is resampling ahead by "
         "more than 0.005?",
    "c": "compare the two 80-call rows' object IoU: here one of them is ahead by more than 0.005",
}, why="RePaint's paper found resampling ahead at equal cost (faces at 256 × 256, 250 steps, large masks): each "
   "resampling re-noises the drawn part and redraws it after it has seen the kept part, so the two halves come "
   "into agreement a few steps at a time. The measurement decides for this model — and on 300 test tasks "
   "(below) the plain 20-step walk already continues the cut object about as well as either 80-call walk: in an "
   "8 × 8 latent the drawn half meets the kept half within a step or two, and neither finer steps nor resampling "
   "finds much left to fix. In pixel space, on the digits, it does show: a cut stroke must be continued pixel for pixel, and resampling brings the drawn half closer to the real one. A published gain is a measurement on its data: repeat it on yours.")

question("mask_model_cheaper", options={
    "a": "it is the same U-Net as t2i_shapes, with 5 more input channels: 1.35M weights either way. Each call costs "
         "the same; what differs is how many calls it needs",
    "b": "(the right answer)",
    "c": "both models end with the same decoder, and the kept pixels are pasted in both. Count the network calls "
         "instead",
}, answer="b", why="RePaint must resample because its network never sees the kept part clean — only noised copies, "
   "merged after each step. The mask-conditioned model reads the known picture and the mask as extra input channels "
   "at every step, so it draws a continuation from the first step on, with any sampler and 20 or fewer calls. "
   "The price was paid once, in training; Stable Diffusion's inpainting model is built the same way.")

# ----------------------------------------------------------------------------- chapter 11

question("control_strength_zero", options={
    "a": "(the right answer)",
    "b": "λ scales only what the ControlNet *adds* to the base's skips and middle; the base itself still runs in "
         "full. Nothing is switched off but the addition",
    "c": "the prompt reaches the frozen base through its own cross-attention, which λ does not touch: with nothing "
         "added, what is left is the base reading the prompt",
}, answer="a", why="The residuals are multiplied by λ before they are added, so λ = 0 adds exactly 0 and the frozen "
   "base computes what it always computed: the same prediction at every step, the same picture, bit for bit "
   "(the cell below checks it). In between, λ slides from the base's own picture towards the condition's.")

question("gaussian_start", options={
    "a": "that is what *zero* convolutions give. A Gaussian 1×1 convolution turns the copy's features into "
         "residuals as large as the skips they are added to: what reaches the base's way up is no longer what it "
         "was trained on",
    "b": "(the right answer)",
    "c": "the copy has never seen an outline yet — its hint encoder's last layer is still zero — so nothing in it "
         "knows where the outline is. What it adds is its copy of the base's own features, at full size",
}, answer="b", why="With Gaussian convolutions the untrained ControlNet adds to every skip a random mixture of the "
   "copy's features, as large as the skip itself: the base's way up reads features it has never seen and draws "
   "other pictures — smudged, recoloured, some no longer what the prompt asks. Training must first undo that damage. Zero convolutions add exactly "
   "nothing at step 0, so training starts from the base's own pictures and only has to learn what to add.")

question("conflict_winner", options={
    "a": "the outline enters every skip at every step — but look at the pictures at λ = 1: whose shape do they "
         "have, and where is it drawn?",
    "b": "look at the shares printed at λ = 1: does the outline's shape win there, or only its place and size?",
    "c": "look at the pictures at λ = 1: are they blends, or clean shapes of one kind — and which kind?",
}, why="The prompt wins: at λ = 1 nearly every picture has the shape the prompt names, drawn where the outline is and "
   "about as large (the IoU with the condition rises with λ while the shape does not change). The ControlNet was "
   "trained only on outlines that agree with their captions (or with the empty prompt), so it never had to override "
   "a word: it learned *where* and *how large*, while *what* still comes from the prompt through cross-attention. "
   "Only far beyond the strength it was trained at does the outline start to win.")

question("sudden_convergence", options={
    "a": "look at the first points of the curve: for how many steps does the IoU stay where the base alone is?",
    "b": "look at where the curve leaves the base's level, and how many steps it takes to get most of the way up",
    "c": "look at the first points: the zero convolutions start at 0, so the first steps change almost nothing",
}, why="For hundreds of steps the IoU stays at the base's level — the zero convolutions are still growing out "
   "of 0 and the copy is still learning to read the hint — and then, within about a hundred steps, the drawn "
   "objects snap onto the condition. Zhang et al. call it the sudden convergence: the model does not learn to "
   "follow the condition gradually, it starts to follow it at once.")


question("keep_outline", options={
    "a": "that is plain img2img (chapter 10: the outline kept in 7 % of pictures at s = 0.6). The ControlNet adds the "
         "mask into every step, from the first one, while the noise is still being removed: look at the IoU row "
         "with the control",
    "b": "most, but look closer: does the smallest IoU printed reach 0.99?",
    "c": "the condition is the picture's own mask, but the ControlNet learned to *follow* masks, not to copy them "
         "(section 7: IoU 0.92 from pure noise). Look at the smallest IoU printed",
}, why="Most recoloured pictures keep their outline. The noise of s = 0.6 frees the colour and the outline alike, but "
   "at every step the ControlNet steers the redrawn object back into the mask it was given — the picture's own — so "
   "what is drawn anew is what the mask does not say: the colour. Not pixel for pixel: the ControlNet follows a mask "
   "as closely as its training taught it, a pixel or two off, which costs small shapes most. One knob could not "
   "separate colour from outline; two inputs can — the strength frees, the control holds.")

# ----------------------------------------------------------------------------- chapter 12

question("heart_before", options={
    "a": "the word has never been in a caption: to CLIP's tokenizer it is four pieces, \" \", \"he\", \"ar\", \"t\", "
         "that no training picture was ever tied to. Look at what the outline reader says of each picture",
    "b": "(the right answer)",
    "c": "the model still reads the colour, the background and the place: only the shape is unknown. Look at the "
         "pictures: each has an object",
}, why="A model can only draw what it has learned: for a word it cannot read it draws one of the shapes it "
   "knows — or a rounded blob halfway between them — in the colours and places the rest of the prompt asks. "
   "(The judge, trained on clean renders, even calls some of those blobs \"heart\"; the outline does not.)")

question("lora_first_gradient", options={
    "a": "B is zero, so the change B A x is zero whatever A is — and A's gradient is Bᵀ times the gradient at the "
         "output, which is zero too",
    "b": "(the right answer)",
    "c": "it is the other way round: ∂y/∂B = (α/r)·(A x)ᵀ, and A x is not zero; A's gradient goes through B, which is",
    "d": "the change is zero at step 0, but its gradient is not: B's gradient is (α/r) times the gradient at the "
         "output times (A x)ᵀ — and A, random, makes A x non-zero",
}, answer="b", why="B's gradient reads A x, which is not zero; A's gradient reads B, which is. So the first step "
   "moves B alone, away from zero, and from the second step on both train. The adapted model starts as the base, "
   "exactly — the same idea as chapter 11's zero convolutions — and still learns.")

question("rank_enough", options={
    "1": "rank 1 gives each adapted layer one direction to change in: look at its accuracy beside the others'",
    "2": "look at the table: is rank 2 within 5 points of the best rank's hearts?",
    "4": "look at the table: is rank 4 within 5 points of the best rank's hearts — and is a smaller one already?",
    "8": "a larger rank has more numbers to learn from 10 pictures, not more to learn: compare it with the smaller "
         "ranks' accuracy",
    "16": "16 has 16 times the numbers of rank 1 and learns from the same 10 pictures: compare their accuracy",
}, why="The smallest rank within 5 points of the best is enough: what a handful of pictures can teach is a small "
   "change, and more rank only adds numbers to fit them with (Hu et al. found rank 1–4 enough for GPT-3). Read the "
   "differences with care: the same rank-4 recipe trained with another seed moves by up to ten points.")

question("held_out_loss", options={
    "a": "look at the orange curve after the early-stopping line: does it keep falling?",
    "b": "look at where the orange curve is lowest, and at what it does after that while the blue one goes on down",
    "c": "look at the first steps: the held-out pictures are hearts like the training ones, so learning the heart "
         "helps them at first",
}, why="At first the model learns what the ten pictures share — the heart — and that helps the held-out hearts "
   "too; then it learns what only those ten have — their exact places, colours, jitter — and the held-out loss "
   "turns up while the training loss keeps falling. That turn is overfitting, and the step before it is where "
   "early stopping stops.")

question("most_forgetting", options={
    "a": "full fine-tuning without prior preservation changes every weight of the U-Net and replays nothing of "
         "the old prompts: look at its drift in the table",
    "b": "prior preservation replays the base's own pictures: look at how much it keeps",
    "c": "LoRA changes only its low-rank adapters, 1.8 % of the numbers: look at its drift beside full fine-tuning's",
    "d": "LoRA with prior preservation is the recipe's choice: look at how little it forgets",
}, why="Forgetting is what the training pulls the old weights away from. Full fine-tuning moves every weight toward "
   "ten pictures of hearts and nothing pulls back; prior preservation (the article's \"replay\") shows the base's "
   "own pictures beside the new ones, and LoRA (its \"parallel model\") leaves the old weights untouched and adds "
   "a small change beside them.")
