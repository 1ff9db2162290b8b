//! Small-region removal (`remove_small_regions`): 8-connected components in OpenCV's labelling order.

/// What [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Fill background components smaller than the threshold (including ones touching the border).
    Holes,
    /// Remove foreground components smaller than the threshold (the largest is kept if all are small).
    Islands,
}

/// The official `remove_small_regions(mask, area_thresh, mode)` on a row-major mask: returns the new mask and
/// whether any region was smaller than `area_thresh` (then the mask counts as modified, even if unchanged).
pub fn remove_small_regions(
    mask: &[bool],
    height: usize,
    width: usize,
    area_thresh: f64,
    mode: RegionMode,
) -> (Vec<bool>, bool) {
    let bytes: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
    let (out, changed) = remove_small_regions_u8(&bytes, height, width, area_thresh, mode);
    (out.into_iter().map(|v| v != 0).collect(), changed)
}

#[derive(Clone, Copy)]
struct Run {
    y: u32,
    xs: u32,
    /// Inclusive end.
    xe: u32,
}

fn find(parent: &mut [u32], mut i: u32) -> u32 {
    let mut root = i;
    while parent[root as usize] != root {
        root = parent[root as usize];
    }
    while parent[i as usize] != root {
        let next = parent[i as usize];
        parent[i as usize] = root;
        i = next;
    }
    root
}

fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

/// 8-connected components of the non-zero pixels: the runs, each run's component id (components numbered in
/// OpenCV's label order), and each component's size.
fn connected_components(
    mask: &[u8],
    height: usize,
    width: usize,
) -> (Vec<Run>, Vec<u32>, Vec<u64>) {
    let mut runs: Vec<Run> = Vec::new();
    let mut parent: Vec<u32> = Vec::new();
    let mut prev_start = 0;
    for y in 0..height {
        let row = &mask[y * width..(y + 1) * width];
        let cur_start = runs.len();
        let mut x = 0;
        while x < width {
            if row[x] == 0 {
                x += 1;
                continue;
            }
            let xs = x;
            while x < width && row[x] != 0 {
                x += 1;
            }
            let id = runs.len() as u32;
            runs.push(Run {
                y: y as u32,
                xs: xs as u32,
                xe: (x - 1) as u32,
            });
            parent.push(id);
        }
        // Union with the runs of the previous row that touch (8-connectivity: ranges within one column).
        let cur_end = runs.len();
        let mut j = prev_start;
        for c in cur_start..cur_end {
            let (xs, xe) = (runs[c].xs, runs[c].xe);
            while j < cur_start && runs[j].xe + 1 < xs {
                j += 1;
            }
            let mut k = j;
            while k < cur_start && runs[k].xs <= xe + 1 {
                union(&mut parent, c as u32, k as u32);
                k += 1;
            }
        }
        prev_start = cur_start;
    }
    // Component order: OpenCV labels components by their first 2×2 block in raster order.
    let n = runs.len();
    let mut key = vec![u64::MAX; n];
    let mut size = vec![0u64; n];
    for (r, run) in runs.iter().enumerate() {
        let root = find(&mut parent, r as u32) as usize;
        let k = ((run.y / 2) as u64) << 32 | (run.xs / 2) as u64;
        key[root] = key[root].min(k);
        size[root] += (run.xe - run.xs + 1) as u64;
    }
    let mut roots: Vec<usize> = (0..n).filter(|&r| parent[r] as usize == r).collect();
    roots.sort_by_key(|&r| key[r]);
    let mut comp_of_root = vec![u32::MAX; n];
    for (c, &r) in roots.iter().enumerate() {
        comp_of_root[r] = c as u32;
    }
    let comp: Vec<u32> = (0..n)
        .map(|r| comp_of_root[find(&mut parent, r as u32) as usize])
        .collect();
    let sizes: Vec<u64> = roots.iter().map(|&r| size[r]).collect();
    (runs, comp, sizes)
}

pub(super) fn remove_small_regions_u8(
    mask: &[u8],
    height: usize,
    width: usize,
    area_thresh: f64,
    mode: RegionMode,
) -> (Vec<u8>, bool) {
    let holes = mode == RegionMode::Holes;
    let working: Vec<u8> = mask.iter().map(|&v| u8::from((v != 0) != holes)).collect();
    let (runs, comp, sizes) = connected_components(&working, height, width);
    let small: Vec<bool> = sizes.iter().map(|&s| (s as f64) < area_thresh).collect();
    if !small.iter().any(|&s| s) {
        return (mask.to_vec(), false);
    }
    if holes {
        let mut out: Vec<u8> = mask.iter().map(|&v| u8::from(v != 0)).collect();
        for (r, run) in runs.iter().enumerate() {
            if small[comp[r] as usize] {
                let o = run.y as usize * width;
                out[o + run.xs as usize..=o + run.xe as usize].fill(1);
            }
        }
        (out, true)
    } else {
        let mut fill: Vec<bool> = small.iter().map(|&s| !s).collect();
        if !fill.iter().any(|&f| f) {
            // Every region is below the threshold: keep the largest (the first in label order on ties).
            let mut best = 0;
            for (i, &s) in sizes.iter().enumerate() {
                if s > sizes[best] {
                    best = i;
                }
            }
            fill[best] = true;
        }
        let mut out = vec![0u8; height * width];
        for (r, run) in runs.iter().enumerate() {
            if fill[comp[r] as usize] {
                let o = run.y as usize * width;
                out[o + run.xs as usize..=o + run.xe as usize].fill(1);
            }
        }
        (out, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        // 6×6: a 2×2 island (4 px), a 1-px island, and a ring with a 1-px hole.
        #[rustfmt::skip]
        let m: Vec<bool> = [
            1, 1, 0, 0, 0, 0,
            1, 1, 0, 0, 0, 1,
            0, 0, 0, 0, 0, 0,
            0, 0, 1, 1, 1, 0,
            0, 0, 1, 0, 1, 0,
            0, 0, 1, 1, 1, 0,
        ].iter().map(|&v| v == 1).collect();
        let (islands, changed) = remove_small_regions(&m, 6, 6, 2.0, RegionMode::Islands);
        assert!(changed);
        assert!(!islands[5 + 6] && islands[0] && islands[2 * 6 + 6 + 2]);
        let (holes, changed) = remove_small_regions(&m, 6, 6, 2.0, RegionMode::Holes);
        assert!(changed);
        assert!(holes[4 * 6 + 3]);
        assert_eq!(holes.iter().filter(|&&v| v).count(), 14);
        let (same, changed) = remove_small_regions(&m, 6, 6, 1.0, RegionMode::Islands);
        assert!(!changed);
        assert_eq!(same, m);
        // All islands small: keep the largest.
        let (largest, _) = remove_small_regions(&m, 6, 6, 100.0, RegionMode::Islands);
        assert_eq!(largest.iter().filter(|&&v| v).count(), 8);
    }
}
