use candle_core::{DType, Device, Tensor};
use ideator_model::*;
fn main() -> anyhow::Result<()> {
    let p = assets::default_gguf_path();
    let c = weights::gguf::read_content(&p)?;
    let raw = weights::gguf::load(&p, &c)?;
    let dec = Decoder::from_raw(raw, DType::F32, &Device::Cpu)?;
    let prompt: Vec<u32> = (0..64).map(|i| 100 + i * 7).collect();
    for &b in &[1usize, 8, 32] {
        let new = 32;
        let mut cache = dec.new_cache(b, prompt.len() + new + 1)?;
        let ids: Vec<u32> = (0..b).flat_map(|_| prompt.clone()).collect();
        let pos: Vec<u32> = (0..b).flat_map(|_| 0..prompt.len() as u32).collect();
        let mut valid = vec![vec![true; prompt.len()]; b];
        let t0 = std::time::Instant::now();
        let mut logits = dec.decode(&Tensor::from_vec(ids, (b, prompt.len()), &Device::Cpu)?, &Tensor::from_vec(pos, (b, prompt.len()), &Device::Cpu)?, &valid, &mut cache, AdapterMode::default())?;
        let prefill = t0.elapsed();
        let t0 = std::time::Instant::now();
        for s in 0..new {
            let next = logits.argmax(1)?.to_dtype(DType::U32)?.unsqueeze(1)?;
            for v in valid.iter_mut() { v.push(true); }
            let pos = Tensor::from_vec(vec![(prompt.len() + s) as u32; b], (b, 1), &Device::Cpu)?;
            logits = dec.decode(&next, &pos, &valid, &mut cache, AdapterMode::default())?;
        }
        let el = t0.elapsed().as_secs_f64();
        println!("batch {b}: prefill {:?}, decode {:.1} tok/s ({:.1} ms/step)", prefill, (b * new) as f64 / el, el * 1000.0 / new as f64);
    }
    Ok(())
}
