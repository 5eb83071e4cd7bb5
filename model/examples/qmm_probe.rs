use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor, DType};
fn main() -> anyhow::Result<()> {
    let d = Device::Cpu;
    let w = Tensor::randn(0f32, 0.02, (1536, 576), &d)?;
    let w2 = Tensor::randn(0f32, 0.02, (49152, 576), &d)?;
    for &(name, ref ww) in &[("ffn", &w), ("head", &w2)] {
        let q8 = QMatMul::from_qtensor(QTensor::quantize(ww, GgmlDType::Q8_0)?)?;
        let q4 = QMatMul::from_qtensor(QTensor::quantize(ww, GgmlDType::Q4_0)?)?;
        let wbf = ww.to_dtype(DType::BF16)?;
        let wf16 = ww.to_dtype(DType::F16)?;
        for &m in &[1usize, 8, 32] {
            let x = Tensor::randn(0f32, 1.0, (m, 576), &d)?;
            let xb = x.to_dtype(DType::BF16)?; let xh = x.to_dtype(DType::F16)?;
            let reps = if name == "head" { 20 } else { 200 };
            let time = |f: &dyn Fn() -> Tensor| { f(); let t0 = std::time::Instant::now(); for _ in 0..reps { f(); } t0.elapsed().as_secs_f64() / reps as f64 * 1e6 };
            let tf = time(&|| x.matmul(&ww.t().unwrap()).unwrap());
            let t8 = time(&|| q8.forward(&x).unwrap());
            let t4 = time(&|| q4.forward(&x).unwrap());
            let tb = time(&|| xb.matmul(&wbf.t().unwrap()).unwrap());
            let th = time(&|| xh.matmul(&wf16.t().unwrap()).unwrap());
            let tt = time(&|| ww.matmul(&x.t().unwrap()).unwrap().t().unwrap());
            let xc = x.t().unwrap().contiguous().unwrap();
            let tc = time(&|| ww.matmul(&xc).unwrap());
            println!("{name} m={m}: f32 {tf:.0}us q8_0 {t8:.0}us q4_0 {t4:.0}us bf16 {tb:.0}us f16 {th:.0}us  Wx^T {tt:.0}us Wxc {tc:.0}us");
        }
    }
    Ok(())
}
