//! Sharing a batch of images out to threads, for the CPU passes of inference.

/// Runs `pass` over `images` (`image_len` values per image) and `outputs` (`output_len` values
/// per image), split into contiguous runs of whole images, one per thread: as many threads as
/// libtorch is allowed (`tch::get_num_threads()`), but none with fewer than `min_per_thread`
/// images. The first run goes on the calling thread.
pub(crate) fn for_each_share<T: Send>(
    images: &[f32],
    image_len: usize,
    outputs: &mut [T],
    output_len: usize,
    min_per_thread: usize,
    pass: impl Fn(&[f32], &mut [T]) + Sync,
) {
    let n = images.len() / image_len;
    if n == 0 {
        return;
    }
    let threads =
        (n / min_per_thread).clamp(1, usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1));
    let per_thread = n.div_ceil(threads);
    let pass = &pass;
    std::thread::scope(|scope| {
        let mut shares =
            images.chunks(per_thread * image_len).zip(outputs.chunks_mut(per_thread * output_len));
        let first = shares.next();
        for (images, outputs) in shares {
            scope.spawn(move || pass(images, outputs));
        }
        if let Some((images, outputs)) = first {
            pass(images, outputs);
        }
    });
}
