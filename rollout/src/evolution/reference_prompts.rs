//! The exact text of exploit, explore and fresh prompts built from a fixed database, whole and fitted to a small
//! budget: the reference captured from the prompts as they were built before evolution moved here from the trainer
//! crate (the text now lives in `ideator_envs::prompt::evolution`), so that any change to a prompt's text shows up
//! as a failing test.

use ideator_envs::prompt::evolution::{fit_prompt, FittedPrompt, PromptKind, PromptRequest};

use super::database::{Entry, PromptDatabase};

fn entry(epoch: u64, text: &str, reward: f64, failure: Option<&str>) -> Entry {
    Entry { epoch, text: text.into(), reward, failure: failure.map(str::to_string), baseline: None }
}

/// Tokens as whitespace-separated words, plus a fixed template overhead.
fn words(s: &str) -> usize {
    10 + s.split_whitespace().count()
}

/// Two winners (one tied twice), a loss, two failures (one with a long message) and a long idea that is clipped.
fn reference_database() -> PromptDatabase {
    let mut db = PromptDatabase::new(0.25);
    db.add(entry(0, "[Experiment] raise lr\n[Code Changes]\nlr = 1e-3\n[End]", 0.4, None));
    db.add(entry(0, "[Experiment] broken", 0.0, Some("implementation: unknown knob `x`")));
    db.add(entry(0, "  [Experiment] padded\n[Code Changes]\nwarmup = 10\n[End]  \n", 0.2, None));
    db.add(entry(1, &format!("[Experiment] long {}[End]", "word ".repeat(30)), 0.3, None));
    db.add(entry(1, "[Experiment] crashes", 0.0, Some(&format!("run: {}", "z".repeat(200)))));
    db.add(entry(1, "[Experiment] raise lr\n[Code Changes]\nlr = 1e-3\n[End]", 0.45, None));
    db
}

/// A request of the reference prompts (the task has surrounding whitespace; listed ideas are clipped at 60
/// characters).
fn request<'a>(kind: PromptKind, baseline: f64, listed: Vec<&'a Entry>, avoid: &[&'a str]) -> PromptRequest<'a> {
    PromptRequest {
        kind,
        task: "  TASK: the knobs, the format and an example.\n",
        baseline,
        listed: listed.into_iter().map(Entry::listed).collect(),
        avoid: avoid.to_vec(),
        max_idea_chars: 60,
    }
}

/// Exploit, explore and fresh prompts of the reference database, whole and fitted to a small budget.
fn reference_prompts() -> Vec<FittedPrompt> {
    let db = reference_database();
    let avoid = ["first idea of this round", "  second idea of this round\n", "third"];
    let b = db.baseline;
    let exploit = request(PromptKind::Exploit, b, db.draw_exploit(10, 5), &avoid);
    let explore = request(PromptKind::Explore, b, db.draw_explore(100, 9), &avoid);
    let fresh = request(PromptKind::Fresh, b, Vec::new(), &[]);
    let fresh_avoid = request(PromptKind::Fresh, b, Vec::new(), &avoid[..1]);
    let mut out = Vec::new();
    for r in [&exploit, &explore, &fresh, &fresh_avoid] {
        out.push(fit_prompt(r, usize::MAX, &words).unwrap());
    }
    for (r, room) in [(&exploit, 40), (&explore, 40), (&explore, 70)] {
        let bare = PromptRequest { listed: Vec::new(), avoid: Vec::new(), ..r.clone() };
        let bare = fit_prompt(&bare, usize::MAX, &words).unwrap().tokens;
        out.push(fit_prompt(r, bare + room, &words).unwrap());
    }
    out
}

/// A fitted prompt's (tokens, listed, avoided, dropped).
type Counts = (usize, usize, usize, usize);

/// The counts and the exact text of each of [`reference_prompts`].
const REFERENCE_PROMPTS: [(Counts, &str); 7] = [
    (
        (118, 2, 3, 0),
        "TASK: the knobs, the format and an example.\n\
        \n\
        The baseline recipe (no changes) scores 0.2500. These ideas were tried and beat it; each is shown with \
        its score:\n\
        \n\
        Idea 1 (score 0.4500):\n\
        [Experiment] raise lr\n\
        [Code Changes]\n\
        lr = 1e-3\n\
        [End]\n\
        \n\
        Idea 2 (score 0.3000):\n\
        [Experiment] long word word word word word word word word wo [...]\n\
        \n\
        Propose one new idea that should score even higher than these: refine one of them, or combine the \
        changes of several.\n\
        \n\
        Avoid ideas similar to these, already proposed in this round:\n\
        \n\
        Proposed idea 1:\n\
        first idea of this round\n\
        \n\
        Proposed idea 2:\n\
        second idea of this round\n\
        \n\
        Proposed idea 3:\n\
        third",
    ),
    (
        (172, 6, 3, 0),
        "TASK: the knobs, the format and an example.\n\
        \n\
        For reference, the baseline recipe (no changes) scores 0.2500. These ideas were tried before, with \
        their scores (a failed idea could not be implemented or run and scored 0):\n\
        \n\
        Idea 1 (score 0.4500):\n\
        [Experiment] raise lr\n\
        [Code Changes]\n\
        lr = 1e-3\n\
        [End]\n\
        \n\
        Idea 2 (failed: implementation: unknown knob `x`):\n\
        [Experiment] broken\n\
        \n\
        Idea 3 (score 0.2000):\n\
        [Experiment] padded\n\
        [Code Changes]\n\
        warmup = 10\n\
        [End]\n\
        \n\
        Idea 4 (score 0.4000):\n\
        [Experiment] raise lr\n\
        [Code Changes]\n\
        lr = 1e-3\n\
        [End]\n\
        \n\
        Idea 5 (failed: run: \
        zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz [...]):\n\
        [Experiment] crashes\n\
        \n\
        Idea 6 (score 0.3000):\n\
        [Experiment] long word word word word word word word word wo [...]\n\
        \n\
        Propose one brand-new idea that is different from all of these: a new direction, avoiding the patterns \
        that failed or scored below the baseline.\n\
        \n\
        Avoid ideas similar to these, already proposed in this round:\n\
        \n\
        Proposed idea 1:\n\
        first idea of this round\n\
        \n\
        Proposed idea 2:\n\
        second idea of this round\n\
        \n\
        Proposed idea 3:\n\
        third",
    ),
    (
        (27, 0, 0, 0),
        "TASK: the knobs, the format and an example.\n\
        \n\
        Propose one new idea that should beat the baseline.",
    ),
    (
        (45, 0, 1, 0),
        "TASK: the knobs, the format and an example.\n\
        \n\
        Propose one new idea that should beat the baseline.\n\
        \n\
        Avoid ideas similar to these, already proposed in this round:\n\
        \n\
        Proposed idea 1:\n\
        first idea of this round",
    ),
    (
        (72, 1, 0, 4),
        "TASK: the knobs, the format and an example.\n\
        \n\
        The baseline recipe (no changes) scores 0.2500. These ideas were tried and beat it; each is shown with \
        its score:\n\
        \n\
        Idea 1 (score 0.4500):\n\
        [Experiment] raise lr\n\
        [Code Changes]\n\
        lr = 1e-3\n\
        [End]\n\
        \n\
        Propose one new idea that should score even higher than these: refine one of them, or combine the \
        changes of several.",
    ),
    (
        (84, 1, 0, 8),
        "TASK: the knobs, the format and an example.\n\
        \n\
        For reference, the baseline recipe (no changes) scores 0.2500. These ideas were tried before, with \
        their scores (a failed idea could not be implemented or run and scored 0):\n\
        \n\
        Idea 1 (score 0.4500):\n\
        [Experiment] raise lr\n\
        [Code Changes]\n\
        lr = 1e-3\n\
        [End]\n\
        \n\
        Propose one brand-new idea that is different from all of these: a new direction, avoiding the patterns \
        that failed or scored below the baseline.",
    ),
    (
        (127, 3, 2, 4),
        "TASK: the knobs, the format and an example.\n\
        \n\
        For reference, the baseline recipe (no changes) scores 0.2500. These ideas were tried before, with \
        their scores (a failed idea could not be implemented or run and scored 0):\n\
        \n\
        Idea 1 (score 0.4500):\n\
        [Experiment] raise lr\n\
        [Code Changes]\n\
        lr = 1e-3\n\
        [End]\n\
        \n\
        Idea 2 (failed: implementation: unknown knob `x`):\n\
        [Experiment] broken\n\
        \n\
        Idea 3 (score 0.2000):\n\
        [Experiment] padded\n\
        [Code Changes]\n\
        warmup = 10\n\
        [End]\n\
        \n\
        Propose one brand-new idea that is different from all of these: a new direction, avoiding the patterns \
        that failed or scored below the baseline.\n\
        \n\
        Avoid ideas similar to these, already proposed in this round:\n\
        \n\
        Proposed idea 1:\n\
        second idea of this round\n\
        \n\
        Proposed idea 2:\n\
        third",
    ),
];

#[test]
fn reference_prompts_are_exact() {
    let got = reference_prompts();
    assert_eq!(got.len(), REFERENCE_PROMPTS.len());
    for (i, (p, (counts, text))) in got.iter().zip(REFERENCE_PROMPTS).enumerate() {
        assert_eq!(p.text, text, "prompt {i}");
        assert_eq!((p.tokens, p.listed, p.avoided, p.dropped), counts, "prompt {i}");
    }
}
