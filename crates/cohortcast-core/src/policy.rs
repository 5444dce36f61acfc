//! The push policies: the expected-CTR plans (by how users are grouped)
//! and the baselines every claim is measured against.

use std::fmt;

/// A push policy, named as the reports, `target.txt` and `summary.json`
/// write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    /// Expected CTR, push groups built for the batch (the default).
    ExpectedCtr,
    /// Expected CTR, one notification per taste cohort.
    ExpectedCtrTaste,
    /// Expected CTR, each user their own best notification.
    ExpectedCtrUser,
    /// The default's pushes, measured on exactly the users the top-artist
    /// rule pushes (the comparison at equal reach).
    ExpectedCtrOnTopArtistUsers,
    /// Each cohort the notification naming its most played artist.
    TopArtist,
    /// The one notification most users would click, for everyone.
    BestSingle,
    /// A random notification per user.
    Random,
    /// Each user the notification they are most likely to click (known
    /// only on generated data).
    Oracle,
}

impl Policy {
    /// Every policy.
    pub const ALL: [Policy; 8] = [
        Policy::ExpectedCtr,
        Policy::ExpectedCtrTaste,
        Policy::ExpectedCtrUser,
        Policy::ExpectedCtrOnTopArtistUsers,
        Policy::TopArtist,
        Policy::BestSingle,
        Policy::Random,
        Policy::Oracle,
    ];

    /// The name reports print.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::ExpectedCtr => "expected-ctr",
            Policy::ExpectedCtrTaste => "expected-ctr:taste",
            Policy::ExpectedCtrUser => "expected-ctr:user",
            Policy::ExpectedCtrOnTopArtistUsers => "expected-ctr@top-artist-users",
            Policy::TopArtist => "top-artist",
            Policy::BestSingle => "best-single",
            Policy::Random => "random",
            Policy::Oracle => "oracle",
        }
    }

    /// The policy of a name, or `None`.
    pub fn from_name(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl serde::Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Policy::from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown policy `{name}`")))
    }
}

/// Who gets what: the notification index pushed to each user, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct PushPlan {
    /// The policy that made it.
    pub policy: Policy,
    /// Per user (model index): the notification index pushed, or none.
    pub user_push: Vec<Option<u32>>,
    /// Per group, for group-level policies: the notification chosen.
    pub cohort_push: Option<Vec<Option<u32>>>,
    /// Per user, for group-level policies: the group (taste cohort or
    /// release group) their push was decided for, an index into
    /// `cohort_push`.
    pub groups: Option<Vec<u32>>,
}

impl PushPlan {
    pub(crate) fn from_cohorts(policy: Policy, labels: &[u32], cohort_push: Vec<Option<u32>>) -> Self {
        let user_push = labels.iter().map(|&l| cohort_push[l as usize]).collect();
        PushPlan { policy, user_push, cohort_push: Some(cohort_push), groups: Some(labels.to_vec()) }
    }

    /// Users left without a push.
    pub fn users_not_pushed(&self) -> usize {
        self.user_push.iter().filter(|p| p.is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_read_back() {
        for p in Policy::ALL {
            assert_eq!(Policy::from_name(p.name()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Policy>(&format!("\"{p}\"")).unwrap(), p);
        }
        assert_eq!(Policy::from_name("expected_ctr"), None);
        assert!(serde_json::from_str::<Policy>("\"nope\"").is_err());
    }
}
