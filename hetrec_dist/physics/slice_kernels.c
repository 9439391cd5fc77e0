/* The CPU inner loops, in float32 (float64 takes PyTorch's path), in three sections: the projector's (training's
 * forward and backward), the basis optimizer's step (train.row_adam) and backprojection (analysis.reconstruct).
 * physics.compiled builds this file with the system's C compiler (with OpenMP where it has it: then PyTorch's
 * own OpenMP threads run the loops, as its operations' do) and calls it through ctypes. physics.projector (and
 * train.row_adam, analysis.reconstruct) hold the same computations in PyTorch's operations (the path on GPUs, or
 * without a compiler); the tests hold the two equal.
 *
 * A batch is n_images images of points_per_image half-disk points; point n = image * points_per_image + p.
 * Its 8 interpolation corners (i, j, k), i slowest, are rows[8n + c] of the basis, with weights
 * corner_weights[8n + c]. The basis is row-major, n_columns = 2 n_components values a row: the real parts of
 * the K+1 = n_components complex components, then their imaginary parts.
 *
 * Why the image's rows: an image's 8P corners fall on about 2.6P distinct rows (each voxel near the slice is a
 * corner of about 3 of its points). So project, weights_gradient and scatter do their 2(K+1)-wide work once a
 * distinct row of an image, and only 2-wide work (one complex value) a corner: corners() lists each image's
 * distinct rows (image_rows, in the order its points first reach them; capacity 8P an image) and gives each
 * corner its place in that list (slots).
 *
 * Threads split images statically, and scatter splits the basis rows, so that every result is the same from
 * run to run, whatever the number of threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The row this many places ahead in an image's list is prefetched: the 2(K+1)-wide loops wait on memory more
 * than on arithmetic. */
#define AHEAD 8

/* The loops over images hand them to threads a few at a time as each thread gets free, not in fixed halves:
 * the read-ahead thread (data.reader) takes a core now and then, and a fixed share left the other thread
 * waiting for it. Each image's outputs are its own, so the results do not depend on who computes them. */
#define IMAGES_A_TASK 4

/* 4 floats as one SIMD register (GCC's and Clang's vector extension: SSE on x86-64, NEON on ARM); loaded and
 * stored through memcpy, as the rows are not aligned. The compiler did not vectorise these loops itself. */
typedef float float4 __attribute__((vector_size(16)));

static inline float4 load4(const float *p) {
    float4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, float4 v) { memcpy(p, &v, sizeof v); }

static inline void prefetch_row(const float *row, int64_t n_columns) {
    for (int64_t k = 0; k < n_columns; k += 16) __builtin_prefetch(row + k);
    __builtin_prefetch(row + n_columns - 1);
}

/* floorf(x) for |x| < 2^31, without a call into libm (baseline x86-64 has no rounding instruction). */
static inline float floor_of(float x) {
    const float truncated = (float)(int64_t)x;
    return truncated > x ? truncated - 1 : truncated;
}

static inline void thread_share(int64_t n, int64_t *first, int64_t *last) {
#ifdef _OPENMP
    const int64_t thread = omp_get_thread_num(), n_threads = omp_get_num_threads();
#else
    const int64_t thread = 0, n_threads = 1;
#endif
    *first = n * thread / n_threads;
    *last = n * (thread + 1) / n_threads;
}

/* ======== The projector (physics.projector) ======== */

/* Where points k3 (3 per point, voxels) fall in a half-ball (physics.fourier_grid.HalfBall's lookup and
 * extent): flipped (x < 0: the point is negated, Friedel) and the trilinear weights of its corners; marks
 * each row a corner reads (plus its image's row offset, where row_offsets is not NULL) in `touched`
 * (n_rows); lists each image's distinct rows (image_rows, 8P an image; image_row_counts) and gives each
 * corner its place among them (slots). The corners' rows themselves are not written: at large boxes these
 * arrays are hundreds of MB a batch (physics.projector derives them where needed). Returns 0, or -1 where
 * memory ran out. */
int corners(const float *k3, int64_t n_images, int64_t points_per_image, const int32_t *lookup, int64_t extent,
            const int32_t *row_offsets, int64_t n_rows, uint8_t *flipped, float *corner_weights, uint8_t *touched,
            int32_t *slots, int32_t *image_rows, int32_t *image_row_counts) {
    const int64_t side = 2 * extent + 1, capacity = 8 * points_per_image;
    int64_t offsets[8];
    for (int c = 0; c < 8; c++) offsets[c] = (c >> 2) * side * side + ((c >> 1) & 1) * side + (c & 1);
    int failed = 0;
    #pragma omp parallel reduction(| : failed)
    {
        /* per thread, for each row: the last image that reached it (high 32 bits) and its slot in that image's
         * list (low 32 bits), one word so that a corner costs one random access */
        int64_t *seen = malloc(n_rows * sizeof *seen);
        if (seen) {
            for (int64_t r = 0; r < n_rows; r++) seen[r] = -1;
        } else {
            failed = 1;
        }
        #pragma omp for schedule(dynamic, IMAGES_A_TASK)
        for (int64_t image = 0; image < n_images; image++) {
            if (failed) continue;
            int32_t count = 0, *listed = image_rows + image * capacity;
            const int32_t offset = row_offsets ? row_offsets[image] : 0;
            for (int64_t n = image * points_per_image; n < (image + 1) * points_per_image; n++) {
                float q[3] = {k3[3 * n], k3[3 * n + 1], k3[3 * n + 2]}, lower_upper[3][2];
                int64_t cell[3];
                flipped[n] = q[0] < 0;
                for (int a = 0; a < 3; a++) {
                    if (flipped[n]) q[a] = -q[a];
                    const float floor_a = floor_of(q[a]), f = q[a] - floor_a;
                    cell[a] = (int64_t)floor_a;
                    lower_upper[a][0] = 1 - f;
                    lower_upper[a][1] = f;
                }
                const int64_t base = (cell[0] * side + cell[1] + extent) * side + cell[2] + extent;
                for (int c = 0; c < 8; c++) {
                    const int32_t row = lookup[base + offsets[c]] + offset;
                    corner_weights[8 * n + c] =
                        lower_upper[0][c >> 2] * lower_upper[1][(c >> 1) & 1] * lower_upper[2][c & 1];
                    if (seen[row] >> 32 != image) {
                        seen[row] = (int64_t)image << 32 | count;
                        listed[count++] = row;
                        touched[row] = 1; /* threads may write the same 1: no race on the value */
                    }
                    slots[8 * n + c] = (int32_t)(seen[row] & 0xffffffff);
                }
            }
            image_row_counts[image] = count;
        }
        free(seen);
    }
    return failed ? -1 : 0;
}

/* (sum_k x[k] w[k], sum_k y[k] w[k]) over k < n, in 4 interleaved partial sums. */
static inline void dot_pair(const float *x, const float *y, const float *w, int64_t n, float *x_dot, float *y_dot) {
    float4 x_part = {0}, y_part = {0};
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        const float4 weight = load4(w + k);
        x_part += load4(x + k) * weight;
        y_part += load4(y + k) * weight;
    }
    float x_sum = (x_part[0] + x_part[1]) + (x_part[2] + x_part[3]);
    float y_sum = (y_part[0] + y_part[1]) + (y_part[2] + y_part[3]);
    for (; k < n; k++) {
        x_sum += x[k] * w[k];
        y_sum += y[k] * w[k];
    }
    *x_dot = x_sum;
    *y_dot = y_sum;
}

/* slices[n] = (re, im) of sum_k w_k V_k at point n, conjugated where flipped (w: its image's weights): the
 * weighted sum of each of the image's rows once, then interpolated. Returns 0, or -1 where memory ran out. */
int project(const float *basis, const float *image_weights, int64_t n_components, int64_t n_images,
             int64_t points_per_image, const uint8_t *flipped, const int32_t *slots, const float *corner_weights,
             const int32_t *image_rows, const int32_t *image_row_counts, float *slices) {
    const int64_t n_columns = 2 * n_components, capacity = 8 * points_per_image;
    int failed = 0;
    #pragma omp parallel reduction(| : failed)
    {
        float *values = malloc(2 * capacity * sizeof *values); /* the image's volume at each of its rows */
        failed = values == NULL;
        #pragma omp for schedule(dynamic, IMAGES_A_TASK)
        for (int64_t image = 0; image < n_images; image++) {
            if (failed) continue;
            const float *w = image_weights + image * n_components;
            const int32_t *listed = image_rows + image * capacity;
            for (int32_t j = 0; j < image_row_counts[image]; j++) {
                if (j + AHEAD < image_row_counts[image]) prefetch_row(basis + listed[j + AHEAD] * n_columns, n_columns);
                const float *row = basis + (int64_t)listed[j] * n_columns;
                dot_pair(row, row + n_components, w, n_components, values + 2 * j, values + 2 * j + 1);
            }
            for (int64_t n = image * points_per_image; n < (image + 1) * points_per_image; n++) {
                float re = 0, im = 0;
                for (int c = 0; c < 8; c++) {
                    re += corner_weights[8 * n + c] * values[2 * slots[8 * n + c]];
                    im += corner_weights[8 * n + c] * values[2 * slots[8 * n + c] + 1];
                }
                slices[2 * n] = re;
                slices[2 * n + 1] = flipped[n] ? -im : im;
            }
        }
        free(values);
    }
    return failed ? -1 : 0;
}

/* into sums (2 a row of the image's list, zeroed here): sum over the corners on each row of corner weight x
 * the slice gradient (re, im), conjugated where the point was flipped. */
static void gradient_on_rows(const float *grad_slices, const uint8_t *flipped, int64_t image,
                             int64_t points_per_image, const int32_t *slots, const float *corner_weights,
                             int32_t count, float *sums) {
    memset(sums, 0, 2 * count * sizeof *sums);
    for (int64_t n = image * points_per_image; n < (image + 1) * points_per_image; n++) {
        const float re = grad_slices[2 * n], im = flipped[n] ? -grad_slices[2 * n + 1] : grad_slices[2 * n + 1];
        for (int c = 0; c < 8; c++) {
            sums[2 * slots[8 * n + c]] += corner_weights[8 * n + c] * re;
            sums[2 * slots[8 * n + c] + 1] += corner_weights[8 * n + c] * im;
        }
    }
}

/* grad_weights[image][k] = sum over the image's points of the slice gradient g_n (conjugated where flipped)
 * dotted with V_k at the point, (re, im) . (re, im): the gradient of project's slices with respect to the
 * weights. Returns 0, or -1 where memory ran out. */
int weights_gradient(const float *basis, const float *grad_slices, int64_t n_components, int64_t n_images,
                      int64_t points_per_image, const uint8_t *flipped, const int32_t *slots,
                      const float *corner_weights, const int32_t *image_rows, const int32_t *image_row_counts,
                      float *grad_weights) {
    const int64_t n_columns = 2 * n_components, capacity = 8 * points_per_image;
    int failed = 0;
    #pragma omp parallel reduction(| : failed)
    {
        float *sums = malloc(2 * capacity * sizeof *sums);
        failed = sums == NULL;
        #pragma omp for schedule(dynamic, IMAGES_A_TASK)
        for (int64_t image = 0; image < n_images; image++) {
            if (failed) continue;
            const int32_t *listed = image_rows + image * capacity;
            const int32_t count = image_row_counts[image];
            float *g = grad_weights + image * n_components;
            gradient_on_rows(grad_slices, flipped, image, points_per_image, slots, corner_weights, count, sums);
            memset(g, 0, n_components * sizeof *g);
            for (int32_t j = 0; j < count; j++) {
                if (j + AHEAD < count) prefetch_row(basis + listed[j + AHEAD] * n_columns, n_columns);
                const float *row = basis + (int64_t)listed[j] * n_columns;
                const float re = sums[2 * j], im = sums[2 * j + 1];
                int64_t k = 0;
                for (; k + 4 <= n_components; k += 4)
                    store4(g + k, load4(g + k) + re * load4(row + k) + im * load4(row + n_components + k));
                for (; k < n_components; k++) g[k] += re * row[k] + im * row[n_components + k];
            }
        }
        free(sums);
    }
    return failed ? -1 : 0;
}

/* The basis gradient on the touched rows, grad (n_touched x n_columns, zeroed; column_of_row: each basis row's
 * place among them): for every image and each of its rows, grad[column_of_row[row]] += (s.re w | s.im w), s
 * the image's gradient_on_rows and w its weights. First each image's sums (into `sums`, 2 floats for each of
 * the image's rows from 2 x starts[image] on), then each thread adds them into a range of grad's rows of its
 * own, images in order. */
void scatter(const float *grad_slices, const uint8_t *flipped, const float *image_weights, int64_t n_components,
             int64_t n_images, int64_t points_per_image, const int32_t *slots, const float *corner_weights,
             const int32_t *image_rows, const int32_t *image_row_counts, const int64_t *starts,
             const int32_t *column_of_row, int64_t n_touched, float *sums, float *grad) {
    const int64_t n_columns = 2 * n_components, capacity = 8 * points_per_image;
    #pragma omp parallel for schedule(dynamic, IMAGES_A_TASK)
    for (int64_t image = 0; image < n_images; image++)
        gradient_on_rows(grad_slices, flipped, image, points_per_image, slots, corner_weights,
                         image_row_counts[image], sums + 2 * starts[image]);
    #pragma omp parallel
    {
        int64_t first, last;
        thread_share(n_touched, &first, &last);
        for (int64_t image = 0; image < n_images; image++) {
            const float *w = image_weights + image * n_components, *image_sums = sums + 2 * starts[image];
            const int32_t *listed = image_rows + image * capacity;
            for (int32_t j = 0; j < image_row_counts[image]; j++) {
                if (j + AHEAD < image_row_counts[image]) {
                    const int64_t ahead = column_of_row[listed[j + AHEAD]];
                    if (ahead >= first && ahead < last) prefetch_row(grad + ahead * n_columns, n_columns);
                }
                const int64_t column = column_of_row[listed[j]];
                if (column < first || column >= last) continue;
                float *g = grad + column * n_columns;
                const float re = image_sums[2 * j], im = image_sums[2 * j + 1];
                int64_t k = 0;
                for (; k + 4 <= n_components; k += 4) {
                    const float4 weight = load4(w + k);
                    store4(g + k, load4(g + k) + re * weight);
                    store4(g + n_components + k, load4(g + n_components + k) + im * weight);
                }
                for (; k < n_components; k++) {
                    g[k] += re * w[k];
                    g[n_components + k] += im * w[k];
                }
            }
        }
    }
}

/* out[n] = sum_c corner_weights[8n + c] basis[rows[8n + c]] (n_columns values a point): each point's
 * interpolated rows, for any corner weights (pose refinement's derivatives). */
void interpolate(const float *basis, int64_t n_columns, int64_t n_points, const int32_t *rows,
                 const float *corner_weights, float *out) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < n_points; n++) {
        float *o = out + n * n_columns;
        memset(o, 0, n_columns * sizeof *o);
        for (int c = 0; c < 8; c++) {
            const float w = corner_weights[8 * n + c], *row = basis + (int64_t)rows[8 * n + c] * n_columns;
            for (int64_t k = 0; k < n_columns; k++) o[k] += w * row[k];
        }
    }
}

/* ======== The basis optimizer's step (train.row_adam.RowSparseAdam) ======== */

/* torch.optim.SparseAdam's update of the touched rows of a parameter (n_columns values a row) and of its two
 * moments, with the same float operations in the same order, so the same bits: for gradient row g of row r,
 * m' = (g - m) one_minus_beta1 + m; v' = (g g - v) one_minus_beta2 + v; p' = p + (m' / (sqrt(v') + eps))
 * minus_step_size. */
void adam_rows(float *param, float *exp_avg, float *exp_avg_sq, const int64_t *rows, const float *grad,
               int64_t n_touched, int64_t n_columns, float one_minus_beta1, float one_minus_beta2, float eps,
               float minus_step_size) {
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_touched; i++) {
        const float *g = grad + i * n_columns;
        float *p = param + rows[i] * n_columns, *m = exp_avg + rows[i] * n_columns;
        float *v = exp_avg_sq + rows[i] * n_columns;
        for (int64_t k = 0; k < n_columns; k++) {
            m[k] = (g[k] - m[k]) * one_minus_beta1 + m[k];
            v[k] = (g[k] * g[k] - v[k]) * one_minus_beta2 + v[k];
            p[k] = p[k] + m[k] / (sqrtf(v[k]) + eps) * minus_step_size;
        }
    }
}

/* ======== Backprojection (analysis.reconstruct) ======== */

/* Backprojection (analysis.reconstruct): for every point k3 (3 per point, voxels) of every image, its values
 * (n_values a point; where the point is Friedel-flipped, those at odd places, the imaginary parts, negated)
 * times each corner's trilinear weight are added into sums (n_rows x n_values, float64) at the corner's row
 * of the half-ball's lookup (plus the image's row offset). Each thread adds into a range of rows of its own,
 * points in order: the same sums at any number of threads. */
void insert(const float *k3, int64_t n_images, int64_t points_per_image, const int32_t *lookup, int64_t extent,
            const int32_t *row_offsets, const float *values, int64_t n_values, int64_t n_rows, double *sums) {
    const int64_t side = 2 * extent + 1;
    int64_t offsets[8];
    for (int c = 0; c < 8; c++) offsets[c] = (c >> 2) * side * side + ((c >> 1) & 1) * side + (c & 1);
    #pragma omp parallel
    {
        int64_t first, last;
        thread_share(n_rows, &first, &last);
        for (int64_t n = 0; n < n_images * points_per_image; n++) {
            const int32_t offset = row_offsets ? row_offsets[n / points_per_image] : 0;
            float q[3] = {k3[3 * n], k3[3 * n + 1], k3[3 * n + 2]}, lower_upper[3][2];
            const int flipped = q[0] < 0;
            int64_t cell[3];
            for (int a = 0; a < 3; a++) {
                if (flipped) q[a] = -q[a];
                const float floor_a = floor_of(q[a]), f = q[a] - floor_a;
                cell[a] = (int64_t)floor_a;
                lower_upper[a][0] = 1 - f;
                lower_upper[a][1] = f;
            }
            const int64_t base = (cell[0] * side + cell[1] + extent) * side + cell[2] + extent;
            const float *v = values + n * n_values;
            for (int c = 0; c < 8; c++) {
                const int64_t row = (int64_t)lookup[base + offsets[c]] + offset;
                if (row < first || row >= last) continue;
                const double w = lower_upper[0][c >> 2] * lower_upper[1][(c >> 1) & 1] * lower_upper[2][c & 1];
                double *s = sums + row * n_values;
                for (int64_t k = 0; k < n_values; k++)
                    s[k] += w * ((flipped && (k & 1)) ? -v[k] : v[k]);
            }
        }
    }
}
