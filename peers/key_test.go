package peers

import "testing"

func TestKeys(t *testing.T) {
	for _, tc := range []struct {
		k    Key
		want string
	}{
		{ServiceKey("team", "db"), "service:team/db"},
		{ServiceKey("team", "shared/db"), "service:shared/db"},
		{JobKey("team", "p-db"), "job:team/p-db"},
	} {
		if got := tc.k.String(); got != tc.want {
			t.Errorf("%+v = %q, want %q", tc.k, got, tc.want)
		}
		back, err := ParseKey(tc.want)
		if err != nil || back != tc.k {
			t.Errorf("ParseKey(%q) = %+v, %v", tc.want, back, err)
		}
		if !IsKeyName(tc.want) {
			t.Errorf("IsKeyName(%q) = false", tc.want)
		}
	}
	for _, bad := range []string{"", "service:", "service:db", "service:/db", "service:team/", "pfx:abc", "@internet", "job:team"} {
		if k, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) = %+v, want an error", bad, k)
		}
	}
}

// FuzzParseKey: what parses prints back as itself.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"service:team/db", "job:a/b", "service:a/b/c", "x:y/z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			return
		}
		if k.String() != s {
			t.Fatalf("ParseKey(%q).String() = %q", s, k.String())
		}
	})
}
