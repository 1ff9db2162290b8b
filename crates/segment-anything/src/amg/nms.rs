//! torchvision's box NMS and the CPU sort of `torch.sort(descending=True)` (libstdc++'s introsort) it relies on.

/// The indices that sort `scores` in descending order exactly as `torch.sort(scores, descending=True)` does on the
/// CPU (not stable: libstdc++'s `std::sort` introsort with torch's comparator, NaN first).
pub fn torch_argsort_descending(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let less = |a: &usize, b: &usize| {
        let (x, y) = (scores[*a], scores[*b]);
        (x.is_nan() && !y.is_nan()) || x > y
    };
    libstdcxx_sort(&mut idx, &less);
    idx
}

/// The indices that sort `scores` in descending order with a stable sort (`torch.sort(stable=True,
/// descending=True)`: NaN first, equal scores in index order).
fn stable_argsort_descending(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => y.partial_cmp(&x).expect("not NaN"),
        }
    });
    idx
}

/// torchvision `nms` (CPU kernel): indices kept, in descending score order (the kernel sorts with
/// `stable=true`, so equal scores keep their index order). Boxes `[x1, y1, x2, y2]`; areas and IoU in `f32`; a box
/// is suppressed when its IoU with a kept box is `> iou_threshold`.
fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    let n = boxes.len();
    if n == 0 {
        return Vec::new();
    }
    let areas: Vec<f32> = boxes
        .iter()
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .collect();
    let order = stable_argsort_descending(scores);
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let [ix1, iy1, ix2, iy2] = boxes[i];
        let iarea = areas[i];
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let b = &boxes[j];
            let xx1 = ix1.max(b[0]);
            let yy1 = iy1.max(b[1]);
            let xx2 = ix2.min(b[2]);
            let yy2 = iy2.min(b[3]);
            let w = (xx2 - xx1).max(0.0);
            let h = (yy2 - yy1).max(0.0);
            let inter = w * h;
            let ovr = inter / (iarea + areas[j] - inter);
            if ovr as f64 > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// torchvision `batched_nms` with every box in one category (as the generator calls it). Above 1000 boxes
/// torchvision runs its "vanilla" path: the kept indices in ascending order, re-sorted by
/// `scores[keep].sort(descending=True)` — torch's default, *unstable* CPU sort ([`torch_argsort_descending`]), which
/// reorders equal scores.
pub fn batched_nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    if boxes.len() * 4 > 4000 {
        let kept = nms(boxes, scores, iou_threshold);
        let mut mask = vec![false; boxes.len()];
        for &i in &kept {
            mask[i] = true;
        }
        let keep_indices: Vec<usize> = (0..boxes.len()).filter(|&i| mask[i]).collect();
        let kept_scores: Vec<f32> = keep_indices.iter().map(|&i| scores[i]).collect();
        torch_argsort_descending(&kept_scores)
            .into_iter()
            .map(|j| keep_indices[j])
            .collect()
    } else {
        nms(boxes, scores, iou_threshold)
    }
}

/// libstdc++ `std::sort` (introsort: median-of-three quicksort down to 16 elements, heapsort past `2·log2(n)`
/// levels, then insertion sort), transcribed so that the order of equivalent elements is the same.
fn libstdcxx_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = v.len();
    if n == 0 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, depth, less);
    final_insertion_sort(v, 0, n, less);
}

const SORT_THRESHOLD: usize = 16;

fn introsort_loop<T: Copy>(
    v: &mut [T],
    first: usize,
    mut last: usize,
    mut depth: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    while last - first > SORT_THRESHOLD {
        if depth == 0 {
            heap_sort(v, first, last, less);
            return;
        }
        depth -= 1;
        let mid = first + (last - first) / 2;
        move_median_to_first(v, first, first + 1, mid, last - 1, less);
        let cut = unguarded_partition(v, first + 1, last, first, less);
        introsort_loop(v, cut, last, depth, less);
        last = cut;
    }
}

fn move_median_to_first<T: Copy>(
    v: &mut [T],
    result: usize,
    a: usize,
    b: usize,
    c: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    if less(&v[a], &v[b]) {
        if less(&v[b], &v[c]) {
            v.swap(result, b);
        } else if less(&v[a], &v[c]) {
            v.swap(result, c);
        } else {
            v.swap(result, a);
        }
    } else if less(&v[a], &v[c]) {
        v.swap(result, a);
    } else if less(&v[b], &v[c]) {
        v.swap(result, c);
    } else {
        v.swap(result, b);
    }
}

fn unguarded_partition<T: Copy>(
    v: &mut [T],
    mut first: usize,
    mut last: usize,
    pivot: usize,
    less: &impl Fn(&T, &T) -> bool,
) -> usize {
    loop {
        while less(&v[first], &v[pivot]) {
            first += 1;
        }
        last -= 1;
        while less(&v[pivot], &v[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        v.swap(first, last);
        first += 1;
    }
}

fn insertion_sort<T: Copy>(v: &mut [T], first: usize, last: usize, less: &impl Fn(&T, &T) -> bool) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        if less(&v[i], &v[first]) {
            let val = v[i];
            v.copy_within(first..i, first + 1);
            v[first] = val;
        } else {
            unguarded_linear_insert(v, i, less);
        }
    }
}

fn unguarded_linear_insert<T: Copy>(v: &mut [T], mut last: usize, less: &impl Fn(&T, &T) -> bool) {
    let val = v[last];
    let mut next = last - 1;
    while less(&val, &v[next]) {
        v[last] = v[next];
        last = next;
        next -= 1;
    }
    v[last] = val;
}

fn final_insertion_sort<T: Copy>(
    v: &mut [T],
    first: usize,
    last: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    if last - first > SORT_THRESHOLD {
        insertion_sort(v, first, first + SORT_THRESHOLD, less);
        for i in first + SORT_THRESHOLD..last {
            unguarded_linear_insert(v, i, less);
        }
    } else {
        insertion_sort(v, first, last, less);
    }
}

fn adjust_heap<T: Copy>(
    v: &mut [T],
    first: usize,
    mut hole: usize,
    len: usize,
    value: T,
    less: &impl Fn(&T, &T) -> bool,
) {
    let top = hole;
    let mut second = hole;
    while second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if less(&v[first + second], &v[first + second - 1]) {
            second -= 1;
        }
        v[first + hole] = v[first + second];
        hole = second;
    }
    if len & 1 == 0 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        v[first + hole] = v[first + second - 1];
        hole = second - 1;
    }
    // __push_heap
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less(&v[first + parent], &value) {
            break;
        }
        v[first + hole] = v[first + parent];
        hole = parent;
    }
    v[first + hole] = value;
}

/// `std::__partial_sort(first, last, last)`: make_heap then sort_heap.
fn heap_sort<T: Copy>(v: &mut [T], first: usize, last: usize, less: &impl Fn(&T, &T) -> bool) {
    let len = last - first;
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[first + parent];
            adjust_heap(v, first, parent, len, value, less);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = last;
    while last - first > 1 {
        last -= 1;
        let value = v[last];
        v[last] = v[first];
        adjust_heap(v, first, 0, last - first, value, less);
    }
}

// ---------------------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_matches_stable_order_for_small_inputs_and_is_sorted() {
        // With at most 16 elements std::sort is an insertion sort, hence stable.
        let s = [0.5f32, 0.7, 0.5, 0.9, 0.7, 0.5];
        assert_eq!(torch_argsort_descending(&s), vec![3, 1, 4, 0, 2, 5]);
        let mut seed = 1u64;
        for n in [17usize, 100, 1000, 5000] {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((seed >> 40) % 7) as f32
                })
                .collect();
            let o = torch_argsort_descending(&v);
            let mut seen = o.clone();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
            assert!(o.windows(2).all(|w| v[w[0]] >= v[w[1]]));
        }
        // Heap sort fallback sorts too.
        let mut v: Vec<u32> = (0..200).rev().collect();
        heap_sort(&mut v, 0, 200, &|a: &u32, b: &u32| a < b);
        assert_eq!(v, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn nms_basics() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
            [5.0, 5.0, 5.0, 5.0],
            [5.0, 5.0, 5.0, 5.0],
        ];
        let scores = [0.8, 0.9, 0.5, 0.3, 0.3];
        // Zero-area boxes never suppress each other (0 / 0 is NaN, not > thresh).
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2, 3, 4]);
        assert_eq!(nms(&boxes, &scores, 0.7), vec![1, 0, 2, 3, 4]);
        assert!(nms(&[], &[], 0.5).is_empty());
    }
}
