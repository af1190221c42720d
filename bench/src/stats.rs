//! Repeated measurements reduced to a median and a min–max range.

/// The median and the range of repeated measurements of one quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Figure {
    /// The figure of `samples` (at least one).
    pub fn of(samples: &[f64]) -> Figure {
        assert!(!samples.is_empty(), "a figure needs at least one sample");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Figure {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    /// Per-round ratios `a[i] / b[i]`: both sides of a comparison come from the same round.
    pub fn ratio(a: &[f64], b: &[f64]) -> Figure {
        let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        Figure::of(&ratios)
    }

    /// Per-round differences `a[i] - b[i]`.
    pub fn difference(a: &[f64], b: &[f64]) -> Figure {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        Figure::of(&d)
    }

    /// "median (min–max)" with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Figure::of(&[3.0, 1.0, 2.0]).median, 2.0);
        let f = Figure::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((f.median, f.min, f.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn ratios_pair_rounds() {
        let f = Figure::ratio(&[2.0, 6.0, 3.0], &[1.0, 2.0, 3.0]);
        assert_eq!((f.median, f.min, f.max), (2.0, 1.0, 3.0));
        assert_eq!(Figure::difference(&[5.0], &[2.0]).median, 3.0);
    }
}
