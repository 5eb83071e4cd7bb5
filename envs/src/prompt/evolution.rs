//! The prompts of evolutionary search: after the environment's task (knob table, format and example), an exploit
//! prompt lists ideas that beat the baseline with their scores and asks to refine or combine them; an explore
//! prompt lists earlier ideas, failures included, and asks for a new direction; a fresh prompt (epoch 0) asks for
//! one new idea. Every prompt ends with the ideas already proposed in the epoch, to avoid. [`fit_prompt`] fits
//! the prompt into the model's context by dropping listed and avoided ideas, never instructions.
//!
//! The input is plain data ([`ListedIdea`]s and texts to avoid); which ideas are listed, and when, is the search's
//! business (`ideator_rollout::evolution`).

use serde::{Deserialize, Serialize};

use crate::environment::EnvError;

/// What a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// Epoch 0: the environment's plain prompt.
    Fresh,
    /// Variants and combinations of ideas that beat the baseline.
    Exploit,
    /// New directions, unlike earlier ideas (failures included).
    Explore,
}

impl PromptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptKind::Fresh => "fresh",
            PromptKind::Exploit => "exploit",
            PromptKind::Explore => "explore",
        }
    }
}

/// An earlier idea as a prompt lists it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListedIdea<'a> {
    pub text: &'a str,
    pub outcome: Outcome<'a>,
}

/// What became of a listed idea: shown next to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome<'a> {
    /// It executed and scored this.
    Scored(f64),
    /// It failed, for this reason (cause and message).
    Failed(&'a str),
}

/// The parts of a prompt before fitting.
#[derive(Debug, Clone)]
pub struct PromptRequest<'a> {
    pub kind: PromptKind,
    /// The environment's task, knob table, idea format and example (everything but the final request).
    pub task: &'a str,
    pub baseline: f64,
    /// The ideas the prompt is about (winners for exploit, a random draw for explore; none for fresh), in
    /// display order: when the prompt must shrink, the last go first.
    pub listed: Vec<ListedIdea<'a>>,
    /// This epoch's ideas so far, oldest first: when the prompt must shrink, the oldest go first.
    pub avoid: Vec<&'a str>,
    pub max_idea_chars: usize,
}

/// A prompt that fits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPrompt {
    /// The user turn.
    pub text: String,
    /// Its size as the caller counts it (the rendered conversation).
    pub tokens: usize,
    pub listed: usize,
    pub avoided: usize,
    /// Listed and avoided ideas left out to fit the context.
    pub dropped: usize,
}

fn clip_chars(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{} [...]", s[..cut].trim_end()),
    }
}

fn fmt_score(x: f64) -> String {
    format!("{x:.4}")
}

fn listed_block(i: usize, idea: &ListedIdea, max_chars: usize) -> String {
    let label = match idea.outcome {
        Outcome::Failed(why) => format!("failed: {}", clip_chars(why, 160)),
        Outcome::Scored(score) => format!("score {}", fmt_score(score)),
    };
    format!("Idea {} ({label}):\n{}\n", i + 1, clip_chars(idea.text, max_chars))
}

fn avoid_block(i: usize, text: &str, max_chars: usize) -> String {
    format!("Proposed idea {}:\n{}\n", i + 1, clip_chars(text, max_chars))
}

/// The user turn with the chosen listed and avoided ideas.
fn render(req: &PromptRequest, listed: &[ListedIdea], avoid: &[&str]) -> String {
    let b = fmt_score(req.baseline);
    let mut out = String::from(req.task.trim());
    out.push_str("\n\n");
    match req.kind {
        PromptKind::Fresh => out.push_str("Propose one new idea that should beat the baseline."),
        PromptKind::Exploit => {
            out.push_str(&format!(
                "The baseline recipe (no changes) scores {b}. These ideas were tried and beat it; each is shown with \
                 its score:\n\n"
            ));
            push_listed(&mut out, listed, req.max_idea_chars);
            out.push_str(
                "Propose one new idea that should score even higher than these: refine one of them, or combine the \
                 changes of several.",
            );
        }
        PromptKind::Explore => {
            out.push_str(&format!(
                "For reference, the baseline recipe (no changes) scores {b}. These ideas were tried before, with \
                 their scores (a failed idea could not be implemented or run and scored 0):\n\n"
            ));
            push_listed(&mut out, listed, req.max_idea_chars);
            out.push_str(
                "Propose one brand-new idea that is different from all of these: a new direction, avoiding the \
                 patterns that failed or scored below the baseline.",
            );
        }
    }
    if !avoid.is_empty() {
        out.push_str("\n\nAvoid ideas similar to these, already proposed in this round:\n\n");
        for (i, t) in avoid.iter().enumerate() {
            out.push_str(&avoid_block(i, t, req.max_idea_chars));
            out.push('\n');
        }
        out.truncate(out.trim_end().len());
    }
    out
}

fn push_listed(out: &mut String, listed: &[ListedIdea], max_chars: usize) {
    for (i, idea) in listed.iter().enumerate() {
        out.push_str(&listed_block(i, idea, max_chars));
        out.push('\n');
    }
}

/// Builds the prompt and fits it into `budget` tokens as `count` measures them (the caller renders the whole
/// conversation, so the chat template is counted too): the instructions always stay; listed ideas and ideas to
/// avoid are dropped (the last listed and the oldest avoided first, alternately) until it fits. Fails only when
/// the instructions alone do not fit.
pub fn fit_prompt(
    req: &PromptRequest,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<FittedPrompt, EnvError> {
    let full = render(req, &req.listed, &req.avoid);
    let tokens = count(&full);
    if tokens <= budget {
        return Ok(FittedPrompt {
            text: full,
            tokens,
            listed: req.listed.len(),
            avoided: req.avoid.len(),
            dropped: 0,
        });
    }
    let bare = render(req, &[], &[]);
    let bare_tokens = count(&bare);
    if bare_tokens > budget {
        return Err(EnvError::Config(format!(
            "the {} prompt's instructions alone take {bare_tokens} tokens, more than the {budget} the model's context \
             leaves after the new tokens; use a model with a longer context or fewer sampling.max_new_tokens",
            req.kind.as_str()
        )));
    }
    let order = priority(req.listed.len(), req.avoid.len());
    // The section headings of the avoid list cost a few tokens too; keep a small margin.
    let keep = first_cut(req, &order, budget.saturating_sub(bare_tokens + 24), count);
    Ok(shrink(req, &order, keep, budget, count))
}

/// Which ideas stay first: listed ideas in display order and avoided ideas newest first, interleaved; each as
/// (listed?, index).
fn priority(listed: usize, avoid: usize) -> Vec<(bool, usize)> {
    let mut order: Vec<(bool, usize)> = Vec::new();
    let (mut li, mut ai) = (0, avoid);
    while li < listed || ai > 0 {
        if li < listed {
            order.push((true, li));
            li += 1;
        }
        if ai > 0 {
            ai -= 1;
            order.push((false, ai));
        }
    }
    order
}

/// How many of `order` a first cut keeps: per-idea costs, measured one at a time against the bare prompt (close
/// to additive), summed in priority order until they exceed `room`.
fn first_cut(req: &PromptRequest, order: &[(bool, usize)], room: usize, count: &dyn Fn(&str) -> usize) -> usize {
    let overhead = count("");
    let cost = |block: String| count(&block).saturating_sub(overhead);
    let listed_costs: Vec<usize> =
        req.listed.iter().enumerate().map(|(i, e)| cost(listed_block(i, e, req.max_idea_chars))).collect();
    let avoid_costs: Vec<usize> =
        req.avoid.iter().enumerate().map(|(i, t)| cost(avoid_block(i, t, req.max_idea_chars))).collect();
    let mut used = 0;
    let mut keep = 0;
    for &(is_listed, i) in order {
        let c = if is_listed { listed_costs[i] } else { avoid_costs[i] };
        if used + c > room {
            break;
        }
        used += c;
        keep += 1;
    }
    keep
}

/// The prompt with the first `keep` ideas of `order`, measured whole and trimmed one idea at a time while the
/// first cut's estimate was short (down to none).
fn shrink(
    req: &PromptRequest,
    order: &[(bool, usize)],
    mut keep: usize,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> FittedPrompt {
    loop {
        let chosen = &order[..keep];
        let mut listed_idx: Vec<usize> = chosen.iter().filter(|(l, _)| *l).map(|&(_, i)| i).collect();
        let mut avoid_idx: Vec<usize> = chosen.iter().filter(|(l, _)| !*l).map(|&(_, i)| i).collect();
        listed_idx.sort_unstable();
        avoid_idx.sort_unstable();
        let listed: Vec<ListedIdea> = listed_idx.iter().map(|&i| req.listed[i]).collect();
        let avoid: Vec<&str> = avoid_idx.iter().map(|&i| req.avoid[i]).collect();
        let text = render(req, &listed, &avoid);
        let tokens = count(&text);
        if tokens <= budget || keep == 0 {
            let dropped = req.listed.len() + req.avoid.len() - keep;
            return FittedPrompt { text, tokens, listed: listed.len(), avoided: avoid.len(), dropped };
        }
        keep -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(text: &str, score: f64) -> ListedIdea<'_> {
        ListedIdea { text, outcome: Outcome::Scored(score) }
    }

    /// Tokens as whitespace-separated words, plus a fixed template overhead.
    fn words(s: &str) -> usize {
        10 + s.split_whitespace().count()
    }

    fn request<'a>(kind: PromptKind, listed: Vec<ListedIdea<'a>>, avoid: Vec<&'a str>) -> PromptRequest<'a> {
        PromptRequest { kind, task: "TASK with knobs.", baseline: 0.25, listed, avoid, max_idea_chars: 200 }
    }

    #[test]
    fn a_prompt_that_fits_is_complete_and_ends_with_the_ideas_to_avoid() {
        let e1 = scored("[Experiment] raise lr [Code Changes] lr = 1e-3 [End]", 0.4);
        let e2 =
            ListedIdea { text: "[Experiment] broken", outcome: Outcome::Failed("implementation: unknown knob `x`") };
        let req = request(PromptKind::Explore, vec![e1, e2], vec!["first this round", "second this round"]);
        let p = fit_prompt(&req, 10_000, &words).unwrap();
        assert_eq!((p.listed, p.avoided, p.dropped), (2, 2, 0));
        assert!(p.text.starts_with("TASK with knobs."));
        assert!(p.text.contains("baseline recipe (no changes) scores 0.2500"));
        assert!(p.text.contains("Idea 1 (score 0.4000)"));
        assert!(p.text.contains("Idea 2 (failed: implementation: unknown knob `x`)"));
        assert!(p.text.contains("brand-new idea"));
        assert!(p.text.ends_with("Proposed idea 2:\nsecond this round"), "{}", p.text);
        assert_eq!(p.tokens, words(&p.text));
        let ex = fit_prompt(&request(PromptKind::Exploit, vec![e1], vec![]), 10_000, &words).unwrap();
        assert!(ex.text.contains("beat it") && ex.text.contains("combine"));
        assert!(!ex.text.contains("Avoid ideas"));
    }

    #[test]
    fn fitting_drops_ideas_never_instructions() {
        let long: Vec<String> = (0..30).map(|i| format!("idea number {i} {}", "word ".repeat(20))).collect();
        let avoid_texts: Vec<String> = (0..30).map(|i| format!("avoid {i} {}", "w ".repeat(20))).collect();
        let req = request(
            PromptKind::Exploit,
            long.iter().map(|t| scored(t, 0.3)).collect(),
            avoid_texts.iter().map(String::as_str).collect(),
        );
        let full = fit_prompt(&req, usize::MAX, &words).unwrap();
        let bare = words(&render(&req, &[], &[]));
        for budget in [bare, bare + 50, bare + 300, full.tokens - 1] {
            let p = fit_prompt(&req, budget, &words).unwrap();
            assert!(p.tokens <= budget, "{} > {budget}", p.tokens);
            assert!(p.dropped > 0);
            assert_eq!(p.listed + p.avoided + p.dropped, 60);
            // Every instruction survives.
            assert!(p.text.starts_with("TASK with knobs."));
            assert!(p.text.contains("Propose one new idea that should score even higher"));
            // Kept listed ideas are the first ones; kept avoided ideas are the newest.
            if p.listed > 0 {
                assert!(p.text.contains("idea number 0 "));
            }
            if p.avoided > 0 {
                assert!(p.text.contains("avoid 29 "));
                assert!(!p.text.contains("avoid 0 ") || p.avoided == 30);
            }
            // Dropping is shared between the two lists.
            if budget > bare + 100 {
                assert!(p.listed > 0 && p.avoided > 0, "{} listed, {} avoided", p.listed, p.avoided);
            }
        }
        let too_small = fit_prompt(&req, bare - 1, &words);
        assert!(too_small.unwrap_err().to_string().contains("instructions alone"));
    }

    #[test]
    fn listed_ideas_are_clipped() {
        let text = "x".repeat(5000);
        let req =
            PromptRequest { max_idea_chars: 100, ..request(PromptKind::Explore, vec![scored(&text, 0.3)], vec![]) };
        let p = fit_prompt(&req, usize::MAX, &words).unwrap();
        assert!(p.text.contains(&format!("{} [...]", "x".repeat(100))));
        assert!(!p.text.contains(&"x".repeat(101)));
    }
}
