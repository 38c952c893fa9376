/// An image classification split held in memory as bytes, NCHW order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// `[channels, height, width]` of one image.
    pub shape: [usize; 3],
    /// `n · c · h · w` pixel bytes, image-major, then channel, row, column.
    pub pixels: Vec<u8>,
    pub labels: Vec<u16>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Keep the first `n` images (deterministic subsets for quick runs).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.pixels.truncate(n * self.image_len());
    }

    /// Per-channel mean and standard deviation of pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> Vec<(f32, f32)> {
        let [c, h, w] = self.shape;
        let hw = h * w;
        (0..c)
            .map(|ch| {
                let (mut sum, mut sq, mut count) = (0f64, 0f64, 0f64);
                for img in self.pixels.chunks_exact(c * hw) {
                    for &p in &img[ch * hw..(ch + 1) * hw] {
                        let v = p as f64 / 255.0;
                        sum += v;
                        sq += v * v;
                        count += 1.0;
                    }
                }
                let mean = sum / count.max(1.0);
                let var = (sq / count.max(1.0) - mean * mean).max(1e-12);
                (mean as f32, var.sqrt() as f32)
            })
            .collect()
    }
}

/// A dataset: training and test splits plus what the model needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub num_classes: usize,
    pub train: ImageSet,
    pub test: ImageSet,
    /// Where it was read from (shown in logs and the run's config).
    pub source: String,
}

impl Dataset {
    /// Seeded random pixels in `kind`'s shape with cycling labels: for what depends on shapes
    /// only (memory prediction, probes), never for accuracy.
    pub fn random_pixels(kind: crate::DatasetKind, train: usize, test: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let shape = kind.input_shape();
        let mut split = |n: usize| ImageSet {
            shape,
            pixels: (0..n * shape.iter().product::<usize>()).map(|_| rng.random::<u8>()).collect(),
            labels: (0..n).map(|i| (i % kind.num_classes()) as u16).collect(),
        };
        let (train, test) = (split(train), split(test));
        Self { name: kind.name().into(), num_classes: kind.num_classes(), train, test, source: "random pixels (shapes only)".into() }
    }
}
