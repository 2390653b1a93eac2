//! The training / validation batch loader. Without augmentation (validation) each image is
//! read, letterboxed to `imgsz x imgsz` (`LetterBox(auto=False)`: long side resized to `imgsz`
//! with cv2-exact bilinear, padded with 114), and its labels mapped into the letterboxed image
//! as normalised xywh. With augmentation (training) the samples go through
//! [`crate::augment::train_transforms`] (Mosaic, RandomPerspective, MixUp, HSV, flips; no
//! mosaic in the last `close_mosaic` epochs), seeded per (seed, epoch, index).

use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use yolo_core::burn;
use yolo_core::data::image::{read_rgb8, to_chw};
use yolo_core::data::labels::Sample;
use yolo_core::data::letterbox::LetterBox;

use crate::augment::{augment_batch, train_transforms, AugConfig, AugSample, SampleSource};
use crate::error::Result;
use crate::loss::{Target, Targets};

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 3, S, S]`, RGB in `[0, 1]`.
    pub images: Tensor<4>,
    /// Ground truth, normalised xywh in the letterboxed image.
    pub targets: Targets,
}

/// A prepared image: CHW floats in `[0, 1]` and its boxes.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub chw: Vec<f32>,
    /// `(class, [cx, cy, w, h])` normalised to the letterboxed image.
    pub boxes: Vec<(usize, [f32; 4])>,
}

/// Samples of one split with a batch size and image size.
#[derive(Debug, Clone)]
pub struct Loader {
    pub samples: Vec<Sample>,
    pub imgsz: usize,
    pub batch: usize,
    pub seed: u64,
    /// Shuffle every epoch (training) or keep the order (validation).
    pub shuffle: bool,
    /// Training augmentation and the epoch from which mosaic is closed; `None`: letterbox only.
    pub augment: Option<(AugConfig, usize)>,
    /// Decoded, resized images kept in memory after their first use (Ultralytics'
    /// `cache=ram`); `None` reads every image from disk every time.
    pub cache: Option<std::sync::Arc<RamCache>>,
}

/// Ultralytics' `cache="ram"`: each sample as loaded for augmentation (decoded, long side
/// resized to `imgsz`), filled on first use and shared by the loader threads.
#[derive(Debug, Default)]
pub struct RamCache {
    slots: Vec<std::sync::OnceLock<AugSample>>,
}

impl RamCache {
    /// An empty cache for `n` samples.
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// Samples loaded so far.
    pub fn filled(&self) -> usize {
        self.slots.iter().filter(|s| s.get().is_some()).count()
    }

    /// Bytes of image data held.
    pub fn bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.get())
            .map(|s| s.image.as_raw().len())
            .sum()
    }
}

impl SampleSource for Loader {
    fn len(&self) -> usize {
        self.samples.len()
    }

    /// The image with its long side resized to `imgsz` (Ultralytics `load_image`). Images were
    /// decoded once by the dataset scan; one that cannot be read now (deleted or changed on
    /// disk during training) is replaced by a blank background sample with a warning rather
    /// than stopping the run.
    fn get(&self, i: usize) -> AugSample {
        match &self.cache {
            Some(cache) => cache.slots[i].get_or_init(|| self.read(i)).clone(),
            None => self.read(i),
        }
    }
}

impl Loader {
    /// Sample `i` read from disk (see [`SampleSource::get`]).
    fn read(&self, i: usize) -> AugSample {
        let s = &self.samples[i];
        match read_rgb8(&s.image) {
            Ok(img) => AugSample::load(img, &s.labels, self.imgsz as u32),
            Err(e) => {
                eprintln!("warning: {e}; using a blank background image instead");
                let n = self.imgsz as u32;
                AugSample {
                    image: image::RgbImage::from_pixel(n, n, image::Rgb([114; 3])),
                    boxes: vec![],
                }
            }
        }
    }
}

impl Loader {
    /// Number of batches per epoch (the last one may be smaller, as `drop_last=False`).
    pub fn len(&self) -> usize {
        self.samples.len().div_ceil(self.batch)
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Sample indices of every batch of `epoch`: a permutation from `ChaCha8(seed + epoch)`
    /// when shuffling, the file order otherwise.
    pub fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch as u64));
            order.shuffle(&mut rng);
        }
        order.chunks(self.batch).map(<[usize]>::to_vec).collect()
    }

    /// Reads and letterboxes one sample.
    pub fn prepare(&self, index: usize) -> Result<Prepared> {
        let sample = &self.samples[index];
        let img = read_rgb8(&sample.image)?;
        let s = self.imgsz as u32;
        let (img, t) = LetterBox::square(s).with_auto(false).apply(&img);
        let (w, h) = img.dimensions();
        let chw = to_chw(&img);
        let boxes = sample
            .labels
            .iter()
            .map(|l| {
                let [x1, y1, x2, y2] =
                    t.label_to_letterbox([l.cx as f64, l.cy as f64, l.w as f64, l.h as f64]);
                let (fw, fh) = (w as f64, h as f64);
                (
                    l.class,
                    [
                        ((x1 + x2) / 2.0 / fw) as f32,
                        ((y1 + y2) / 2.0 / fh) as f32,
                        ((x2 - x1) / fw) as f32,
                        ((y2 - y1) / fh) as f32,
                    ],
                )
            })
            .collect();
        Ok(Prepared { chw, boxes })
    }

    /// Loads the samples `indices` in parallel (rayon) into one batch on `device`.
    /// One augmented sample as a [`Prepared`] (`imgsz x imgsz`).
    fn from_augmented(&self, s: AugSample) -> Prepared {
        debug_assert_eq!(
            (s.image.width() as usize, s.image.height() as usize),
            (self.imgsz, self.imgsz)
        );
        let chw = to_chw(&s.image);
        let boxes = s
            .labels()
            .into_iter()
            .map(|l| (l.class, [l.cx, l.cy, l.w, l.h]))
            .collect();
        Prepared { chw, boxes }
    }

    /// Loads a batch of `indices` for `epoch` (the epoch seeds the augmentation).
    pub fn load(&self, indices: &[usize], epoch: usize, device: &Device) -> Result<Batch> {
        Ok(self.load_host(indices, epoch)?.to_device(device))
    }

    /// [`load`](Self::load) up to the host buffer: decoding and augmentation, in parallel
    /// (rayon), without touching a device, so it can run on another thread ahead of the step.
    pub fn load_host(&self, indices: &[usize], epoch: usize) -> Result<HostBatch> {
        let prepared: Vec<Prepared> = match &self.augment {
            Some((cfg, close_from)) => {
                let ts = train_transforms(cfg, self.imgsz as u32, epoch >= *close_from);
                augment_batch(&ts, self, indices, self.seed, epoch as u64)
                    .into_par_iter()
                    .map(|s| self.from_augmented(s))
                    .collect()
            }
            None => indices
                .par_iter()
                .map(|&i| self.prepare(i))
                .collect::<Result<_>>()?,
        };
        let s = self.imgsz;
        let mut data = Vec::with_capacity(prepared.len() * 3 * s * s);
        let mut boxes = Vec::new();
        for (b, p) in prepared.into_iter().enumerate() {
            data.extend_from_slice(&p.chw);
            boxes.extend(p.boxes.into_iter().map(|(cls, xywh)| Target {
                batch_idx: b,
                cls,
                xywh,
            }));
        }
        Ok(HostBatch {
            data,
            shape: [indices.len(), 3, s, s],
            targets: Targets { boxes },
        })
    }

    /// The batches of `epoch`, loaded `ahead` batches in advance on a background thread while
    /// the caller works on the current one (PyTorch's `DataLoader` prefetch). Yields the
    /// sample indices and the host batch of each, in order. Dropping the iterator early stops
    /// the thread at its next batch.
    pub fn prefetch(self: &std::sync::Arc<Self>, epoch: usize, ahead: usize) -> Prefetch {
        let batches = self.batches(epoch);
        let (tx, rx) = std::sync::mpsc::sync_channel(ahead.max(1));
        let loader = std::sync::Arc::clone(self);
        std::thread::spawn(move || {
            for idx in batches {
                let batch = loader.load_host(&idx, epoch);
                // A closed channel means the consumer stopped: stop loading too.
                if tx.send(batch.map(|b| (idx, b))).is_err() {
                    break;
                }
            }
        });
        Prefetch { rx }
    }
}

/// Iterator of [`Loader::prefetch`].
pub struct Prefetch {
    rx: std::sync::mpsc::Receiver<Result<(Vec<usize>, HostBatch)>>,
}

impl Iterator for Prefetch {
    type Item = Result<(Vec<usize>, HostBatch)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// A batch in host memory (see [`Loader::load_host`]).
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// `[B, 3, S, S]` row-major, RGB in `[0, 1]`.
    pub data: Vec<f32>,
    pub shape: [usize; 4],
    pub targets: Targets,
}

impl HostBatch {
    /// Uploads the images to `device`.
    pub fn to_device(self, device: &Device) -> Batch {
        Batch {
            images: Tensor::from_data(TensorData::new(self.data, self.shape), device),
            targets: self.targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn loader(n: usize, batch: usize, shuffle: bool) -> Loader {
        Loader {
            samples: (0..n)
                .map(|i| Sample {
                    image: PathBuf::from(format!("{i}.png")),
                    size: yolo_core::data::image::ImageSize {
                        width: 10,
                        height: 10,
                    },
                    labels: vec![],
                })
                .collect(),
            imgsz: 32,
            batch,
            seed: 0,
            shuffle,
            augment: None,
            cache: None,
        }
    }

    #[test]
    fn batches_cover_every_sample_once_and_depend_on_epoch() {
        let l = loader(10, 4, true);
        assert_eq!(l.len(), 3);
        let e0 = l.batches(0);
        assert_eq!(e0.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut all: Vec<usize> = e0.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(l.batches(0), e0, "same seed and epoch, same order");
        assert_ne!(l.batches(1), e0);
        assert_eq!(loader(10, 4, false).batches(3).concat(), (0..10).collect::<Vec<_>>());
    }
}
