//! `Backprop::Auto` against the activation memory, and its share among passes that run side by side. A test binary
//! of its own: it sets the process-wide activation memory, which no other test may see change.

mod common;

use common::{tiny_decoder, ARCHS};
use ideator_model::scored::{set_activation_memory, with_activation_share};
use ideator_model::{AdapterMode, Backprop};

#[test]
fn auto_checkpoints_a_pass_whose_graph_exceeds_its_share_of_the_activation_memory() {
    let mut dec = tiny_decoder(ARCHS[0], 3);
    dec.make_trainable().unwrap();
    let (prefix, continuations) = (vec![5, 17, 3], vec![vec![88, 42, 7], vec![9, 60]]);
    let graph = dec.full_graph_bytes(prefix.len() + continuations.len() * 3);
    let auto = || {
        dec.score_continuations(&prefix, &continuations, 0, AdapterMode::default(), 1.0, Backprop::Auto)
            .unwrap()
            .backprop()
    };
    // Room for the graph, but not for two of them.
    set_activation_memory(graph * 3 / 2);
    assert_eq!(auto(), Backprop::Full, "one pass alone keeps its graph");
    assert_eq!(with_activation_share(2, auto), Backprop::Checkpointed, "each of two passes gets half");
    assert_eq!(auto(), Backprop::Full, "the share ends with the closure");
    set_activation_memory(graph * 2);
    assert_eq!(with_activation_share(2, auto), Backprop::Full, "two graphs fit");
}
