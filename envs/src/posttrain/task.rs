//! The verifiable task: integer arithmetic problems written as text, generated from a fixed seed, with a held-out
//! evaluation set that training never sees, and the reward functions on completions.
//!
//! Answers are written least-significant digit first, after an optional sign (`37+45=28` states 82, `3-45=-24`
//! states -42): the order in which a person computes a sum, so the carry is a dependency on earlier output that a
//! small character-level model can learn (most-significant-first needs the carry before the digits that cause
//! it, and a tiny model learns that only through a fragile phase transition).
//!
//! Everything here is outside what a recipe controls: the problems, the held-out set and the answer check.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The characters of the task's tokenizer (id = position + 1; id 0 is `<eos>`).
pub const ALPHABET: &str = "0123456789+-*=";

/// An arithmetic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Add,
    Sub,
    Mul,
}

impl Op {
    pub(crate) fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
        }
    }

    fn apply(self, a: i64, b: i64) -> i64 {
        match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
        }
    }
}

/// Which problems exist and which are held out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Operands are drawn uniformly from `0 .. 10^digits`.
    pub digits: u32,
    pub ops: Vec<Op>,
    /// Size of the held-out evaluation set.
    pub eval_problems: usize,
    /// Seed of the held-out set (fixed per scale, independent of the run's seed).
    pub seed: u64,
}

/// One problem: `a op b =`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Problem {
    pub a: i64,
    pub b: i64,
    pub op: Op,
}

impl Problem {
    /// The prompt the policy continues, e.g. `37+45=`.
    pub fn prompt(&self) -> String {
        format!("{}{}{}=", self.a, self.op.symbol(), self.b)
    }

    pub fn answer(&self) -> i64 {
        self.op.apply(self.a, self.b)
    }

    /// The answer as the policy should write it (before `<eos>`).
    pub(crate) fn answer_text(&self) -> String {
        write_number(self.answer())
    }

    /// The answer with a classic systematic slip, column by column without carrying: a sum takes each column's
    /// digit sum mod 10 (37+45 -> 72), a difference each column's absolute digit difference (52-38 -> 26). Products
    /// are left right. The base policy is taught a share of these, so it starts with an error that a verifiable
    /// reward can train away.
    pub(crate) fn slipped_answer(&self) -> i64 {
        fn columns(mut a: i64, mut b: i64, f: impl Fn(i64, i64) -> i64) -> i64 {
            let (mut value, mut place) = (0, 1);
            while a > 0 || b > 0 {
                value += f(a % 10, b % 10) * place;
                a /= 10;
                b /= 10;
                place *= 10;
            }
            value
        }
        match self.op {
            Op::Add => columns(self.a, self.b, |x, y| (x + y) % 10),
            Op::Sub if self.a >= self.b => columns(self.a, self.b, |x, y| (x - y).abs()),
            Op::Sub => -columns(self.b, self.a, |x, y| (x - y).abs()),
            Op::Mul => self.answer(),
        }
    }
}

impl TaskSpec {
    fn draw(&self, rng: &mut ChaCha8Rng) -> Problem {
        let n = 10i64.pow(self.digits);
        let op = self.ops[rng.random_range(0..self.ops.len())];
        Problem { a: rng.random_range(0..n), b: rng.random_range(0..n), op }
    }

    /// Number of distinct problems.
    pub fn space(&self) -> u128 {
        let n = 10u128.pow(self.digits);
        n * n * self.ops.len() as u128
    }

    /// Checks that the task is well formed and leaves most problems for training.
    pub fn validate(&self) -> Result<(), String> {
        if self.digits == 0 || self.digits > 8 || self.ops.is_empty() {
            return Err("a task needs 1 to 8 digits and at least one operation".into());
        }
        if (self.eval_problems as u128) * 4 > self.space() {
            return Err(format!("{} held-out problems would take over a quarter of the task", self.eval_problems));
        }
        Ok(())
    }

    /// Longest answer in characters (the sign of a negative difference included).
    pub(crate) fn max_answer_chars(&self) -> usize {
        let max = 10i64.pow(self.digits) - 1;
        self.ops
            .iter()
            .map(|op| match op {
                Op::Add => write_number(2 * max).len(),
                Op::Sub => write_number(-max).len(),
                Op::Mul => write_number(max * max).len(),
            })
            .max()
            .unwrap_or(1)
    }

    /// Longest prompt in characters.
    pub(crate) fn max_prompt_chars(&self) -> usize {
        2 * self.digits as usize + 2
    }
}

/// The held-out problems and a sampler of training problems that never returns one of them.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub spec: TaskSpec,
    pub eval: Vec<Problem>,
    held_out: HashSet<Problem>,
}

impl Task {
    pub fn new(spec: TaskSpec) -> Result<Task, String> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let mut held_out = HashSet::new();
        let mut eval = Vec::with_capacity(spec.eval_problems);
        while eval.len() < spec.eval_problems {
            let p = spec.draw(&mut rng);
            if held_out.insert(p) {
                eval.push(p);
            }
        }
        Ok(Task { spec, eval, held_out })
    }

    /// A training problem drawn from `rng` (rejecting held-out ones).
    pub(crate) fn train_problem(&self, rng: &mut ChaCha8Rng) -> Problem {
        loop {
            let p = self.spec.draw(rng);
            if !self.held_out.contains(&p) {
                return p;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn is_held_out(&self, p: &Problem) -> bool {
        self.held_out.contains(p)
    }
}

/// An integer as answers write it: the sign, then the digits least-significant first (-42 -> `-24`).
pub(crate) fn write_number(n: i64) -> String {
    let digits: String = n.unsigned_abs().to_string().chars().rev().collect();
    if n < 0 {
        format!("-{digits}")
    } else {
        digits
    }
}

/// The integer a completion states (see [`write_number`]): optional sign and digits, nothing else (surrounding
/// spaces ignored).
pub(crate) fn parse_answer(text: &str) -> Option<i64> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = digits.chars().rev().collect::<String>().parse().ok()?;
    Some(if negative { -value } else { value })
}

/// Whether a completion states the right answer (the evaluation's check).
pub(crate) fn is_correct(text: &str, problem: &Problem) -> bool {
    parse_answer(text) == Some(problem.answer())
}

/// How a training completion is rewarded (the evaluation always uses exact match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardKind {
    /// 1 for the right answer, else 0.
    Exact,
    /// Share of the answer's characters right, position by position (units first), over the longer of the two
    /// lengths: 1 exactly for the right answer, partial credit for near misses.
    Digits,
}

/// The training reward of a completion.
pub fn reward(kind: RewardKind, text: &str, problem: &Problem) -> f64 {
    match kind {
        RewardKind::Exact => f64::from(u8::from(is_correct(text, problem))),
        RewardKind::Digits => {
            let want = problem.answer_text();
            let got = text.trim();
            let longer = want.len().max(got.len());
            if longer == 0 {
                return 0.0;
            }
            let same = want.bytes().zip(got.bytes()).filter(|(a, b)| a == b).count();
            same as f64 / longer as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec { digits: 2, ops: vec![Op::Add, Op::Sub], eval_problems: 200, seed: 3 }
    }

    #[test]
    fn problems_and_answers() {
        let p = Problem { a: 37, b: 45, op: Op::Add };
        assert_eq!((p.prompt().as_str(), p.answer(), p.answer_text().as_str()), ("37+45=", 82, "28"));
        let q = Problem { a: 3, b: 45, op: Op::Sub };
        assert_eq!((q.prompt().as_str(), q.answer_text().as_str()), ("3-45=", "-24"));
        assert_eq!(spec().max_answer_chars(), 3);
        assert_eq!(p.slipped_answer(), 72);
        assert_eq!(Problem { a: 95, b: 5, op: Op::Add }.slipped_answer(), 90);
        assert_eq!(Problem { a: 5, b: 5, op: Op::Add }.slipped_answer(), 0);
        assert_eq!(Problem { a: 12, b: 3, op: Op::Add }.slipped_answer(), 15);
        assert_eq!(Problem { a: 52, b: 38, op: Op::Sub }.slipped_answer(), 26);
        assert_eq!(Problem { a: 38, b: 52, op: Op::Sub }.slipped_answer(), -26);
        assert_eq!(Problem { a: 38, b: 38, op: Op::Sub }.slipped_answer(), 0);
        for n in [0, 7, 10, 82, 198, -42, -100] {
            assert_eq!(parse_answer(&write_number(n)), Some(n));
        }
        assert_eq!(TaskSpec { ops: vec![Op::Mul], ..spec() }.max_answer_chars(), 4);
    }

    #[test]
    fn held_out_set_is_fixed_distinct_and_never_trained_on() {
        let a = Task::new(spec()).unwrap();
        let b = Task::new(spec()).unwrap();
        assert_eq!(a.eval, b.eval);
        assert_eq!(a.eval.iter().collect::<HashSet<_>>().len(), 200);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..5000 {
            assert!(!a.is_held_out(&a.train_problem(&mut rng)));
        }
        assert!(Task::new(TaskSpec { digits: 1, eval_problems: 100, ..spec() }).is_err());
    }

    #[test]
    fn answers_parse_strictly_and_rewards_grade() {
        assert_eq!(parse_answer(" 28 "), Some(82));
        assert_eq!(parse_answer("-24"), Some(-42));
        assert_eq!(parse_answer("082"), Some(280));
        for bad in ["", "-", "8 2", "82=", "+82", "1234567890123456789"] {
            assert_eq!(parse_answer(bad), None, "{bad:?}");
        }
        let p = Problem { a: 37, b: 45, op: Op::Add };
        assert_eq!(reward(RewardKind::Exact, "28", &p), 1.0);
        assert_eq!(reward(RewardKind::Exact, "280", &p), 1.0, "a trailing zero is a leading zero: same number");
        assert_eq!(reward(RewardKind::Exact, "82", &p), 0.0);
        assert_eq!(reward(RewardKind::Digits, "28", &p), 1.0);
        assert_eq!(reward(RewardKind::Digits, "27", &p), 0.5);
        assert_eq!(reward(RewardKind::Digits, "281", &p), 2.0 / 3.0);
        assert_eq!(reward(RewardKind::Digits, "", &p), 0.0);
    }
}
