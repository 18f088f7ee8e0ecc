//! Exact brute-force search over contiguous f32 rows.

use std::collections::HashMap;

use super::simd::Kernels;
use super::VectorIndex;

pub struct FlatIndex {
    dim: usize,
    /// Row-major vectors, `ids.len() * dim` floats.
    data: Vec<f32>,
    ids: Vec<u32>,
    row_of: HashMap<u32, u32>,
}

impl FlatIndex {
    pub fn new(dim: usize) -> Self {
        FlatIndex {
            dim,
            data: Vec::new(),
            ids: Vec::new(),
            row_of: HashMap::new(),
        }
    }
}

impl VectorIndex for FlatIndex {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn add(&mut self, id: u32, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        if let Some(&row) = self.row_of.get(&id) {
            let r = row as usize * self.dim;
            self.data[r..r + self.dim].copy_from_slice(v);
            return;
        }
        self.row_of.insert(id, self.ids.len() as u32);
        self.ids.push(id);
        self.data.extend_from_slice(v);
    }

    fn remove(&mut self, id: u32) -> bool {
        let Some(row) = self.row_of.remove(&id) else {
            return false;
        };
        let row = row as usize;
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            self.ids[row] = moved;
            self.row_of.insert(moved, row as u32);
            let (head, tail) = self.data.split_at_mut(last * self.dim);
            head[row * self.dim..(row + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
        }
        self.ids.pop();
        self.data.truncate(last * self.dim);
        // Give memory back once the index has shrunk well below its peak.
        if self.data.capacity() > 64 * self.dim && self.data.capacity() > 2 * self.data.len() {
            self.data.shrink_to(self.data.len() * 5 / 4);
            self.ids.shrink_to(self.ids.len() * 5 / 4);
            self.row_of.shrink_to(self.ids.len() * 5 / 4);
        }
        true
    }

    fn vector(&self, id: u32) -> Option<Vec<f32>> {
        let row = *self.row_of.get(&id)? as usize;
        Some(self.data[row * self.dim..(row + 1) * self.dim].to_vec())
    }

    fn search(&mut self, q: &[f32], k: usize, min_score: f32) -> Vec<(u32, f32)> {
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k == 0 || self.dim == 0 {
            return best;
        }
        let kernels = Kernels::detect();
        for (row, chunk) in self.data.chunks_exact(self.dim).enumerate() {
            let s = kernels.dot(q, chunk);
            if s < min_score {
                continue;
            }
            if best.len() == k && best[k - 1].1 >= s {
                continue;
            }
            let pos = best.partition_point(|&(_, b)| b >= s);
            best.insert(pos, (self.ids[row], s));
            best.truncate(k);
        }
        best
    }

    fn memory_bytes(&self) -> usize {
        self.data.capacity() * 4 + self.ids.capacity() * 4 + self.row_of.capacity() * 12
    }

    fn bytes_per_entry(&self) -> usize {
        self.dim * 4 + 4 + 12
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn add_search_remove() {
        let mut f = FlatIndex::new(3);
        f.add(10, &unit(&[1.0, 0.0, 0.0]));
        f.add(11, &unit(&[0.0, 1.0, 0.0]));
        f.add(12, &unit(&[1.0, 1.0, 0.0]));
        let r = f.search(&unit(&[1.0, 0.1, 0.0]), 2, 0.0);
        assert_eq!(r[0].0, 10);
        assert_eq!(r[1].0, 12);
        assert!(f.remove(10));
        assert!(!f.remove(10));
        let r = f.search(&unit(&[1.0, 0.1, 0.0]), 3, 0.0);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![12, 11]);
        assert_eq!(f.vector(11), Some(unit(&[0.0, 1.0, 0.0])));
        assert_eq!(f.len(), 2);
        let r = f.search(&unit(&[1.0, 0.1, 0.0]), 3, 0.7);
        assert_eq!(r.len(), 1);
    }
}
