package apps

import (
	"context"
	"errors"
	"testing"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// admit sees only verified applications; when it refuses, nothing is
// issued and a refresh token stays valid.
func TestAdmit(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	s := NewStore(db)
	creds, err := s.Create(ctx, "t", "app", []string{ScopeGroup})
	if err != nil {
		t.Fatal(err)
	}
	refuse := errors.New("not now")
	var asked []string
	admit := func(appID string) error {
		asked = append(asked, appID)
		return refuse
	}
	if _, err := s.IssueTokenIf(ctx, creds.AppID, "wrong", admit); !errors.Is(err, ErrBadCredentials) || len(asked) != 0 {
		t.Fatalf("wrong secret: %v, admit asked for %v", err, asked)
	}
	if _, err := s.IssueTokenIf(ctx, creds.AppID, creds.Secret, admit); !errors.Is(err, refuse) || len(asked) != 1 || asked[0] != creds.AppID {
		t.Fatalf("refused: %v, admit asked for %v", err, asked)
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM app_tokens`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d tokens stored after a refusal, %v", n, err)
	}
	tok, err := s.IssueTokenIf(ctx, creds.AppID, creds.Secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RefreshIf(ctx, tok.Refresh, admit); !errors.Is(err, refuse) {
		t.Fatalf("refused refresh: %v", err)
	}
	if _, err := s.RefreshIf(ctx, tok.Refresh, nil); err != nil {
		t.Fatalf("the refresh token did not survive a refused refresh: %v", err)
	}
	if _, err := s.RefreshIf(ctx, "forged", admit); !errors.Is(err, ErrTokenInvalid) || len(asked) != 2 {
		t.Fatalf("forged refresh token: %v, admit asked %d times", err, len(asked))
	}
}
