//! The drawing parts of the dashboard: colours, escaping, bar charts and
//! the 2-D projection of the users' factors, each an SVG string.

use std::fmt::Write;

/// A colour per cohort: hues a golden angle apart.
pub(super) fn colour(c: usize) -> String {
    format!("hsl({:.0},65%,48%)", (c as f64 * 137.508) % 360.0)
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Vertical bars with a label under each (every `label_every`-th).
pub(super) fn bars(id: &str, title: &str, values: &[(String, f64, String)], fmt: &dyn Fn(f64) -> String) -> String {
    bars_titled(id, title, values, None, fmt)
}

/// [`bars`], each bar's tooltip `titles[i]` (its label by default).
pub(super) fn bars_titled(
    id: &str,
    title: &str,
    values: &[(String, f64, String)],
    titles: Option<&[String]>,
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let (w, h, left, bottom) = (900.0, 260.0, 50.0, 40.0);
    let max = values.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-12);
    let n = values.len().max(1) as f64;
    let bw = (w - left - 10.0) / n;
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg id="{id}" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    let _ = write!(s, r##"<line x1="{left}" y1="{}" x2="{w}" y2="{}" stroke="#888"/>"##, h - bottom, h - bottom);
    let _ =
        write!(s, r##"<text x="{}" y="12" font-size="11" text-anchor="end">{}</text>"##, left - 4.0, esc(&fmt(max)));
    let every = (values.len() / 30).max(1);
    for (i, (label, v, col)) in values.iter().enumerate() {
        let bh = (h - bottom - 20.0) * v / max;
        let x = left + i as f64 * bw;
        let _ = write!(
            s,
            r#"<rect class="bar" x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{col}"><title>{}: {}</title></rect>"#,
            h - bottom - bh,
            (bw * 0.85).max(0.5),
            esc(titles.and_then(|t| t.get(i)).unwrap_or(label)),
            esc(&fmt(*v))
        );
        if values.len() <= 12 {
            let _ = write!(
                s,
                r#"<text class="value" x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                x + bw / 2.0,
                h - bottom - bh - 4.0,
                esc(&fmt(*v))
            );
        }
        if i % every == 0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
                x + bw / 2.0,
                h - bottom + 14.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg></figure>");
    s
}

/// The first two principal components of the sampled rows (power iteration
/// with deflation on the covariance; deterministic).
pub(super) fn pca2(x: &[f32], f: usize, rows: &[usize]) -> Vec<(f64, f64)> {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; f];
    for &r in rows {
        for d in 0..f {
            mean[d] += x[r * f + d] as f64 / n;
        }
    }
    let mut cov = vec![0f64; f * f];
    for &r in rows {
        let v: Vec<f64> = (0..f).map(|d| x[r * f + d] as f64 - mean[d]).collect();
        for i in 0..f {
            for j in 0..f {
                cov[i * f + j] += v[i] * v[j] / n;
            }
        }
    }
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for _ in 0..2 {
        let mut v: Vec<f64> = (0..f).map(|i| 1.0 + (i as f64 * 0.37).sin()).collect();
        for _ in 0..200 {
            let mut w: Vec<f64> = (0..f).map(|i| (0..f).map(|j| cov[i * f + j] * v[j]).sum()).collect();
            for c in &comps {
                let p: f64 = w.iter().zip(c).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(c).for_each(|(a, b)| *a -= p * b);
            }
            let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-300 {
                break;
            }
            v = w.into_iter().map(|a| a / norm).collect();
        }
        comps.push(v);
    }
    rows.iter()
        .map(|&r| {
            let p = |c: &Vec<f64>| (0..f).map(|d| (x[r * f + d] as f64 - mean[d]) * c[d]).sum::<f64>();
            (p(&comps[0]), p(&comps[1]))
        })
        .collect()
}
