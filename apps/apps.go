package apps

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ScopeGroup is the permission (客户->客户分组) that groupmatch's APIs require.
const ScopeGroup = "audience.group"

// Token lifetimes, as the platform documents them.
const (
	AccessTTL  = 7200 * time.Second
	RefreshTTL = 14400 * time.Second
)

// Errors of the token APIs. Neither ever says which part of a credential was
// wrong.
var (
	// ErrBadCredentials: unknown appid, wrong secret, or a disabled
	// application (platform code 100100).
	ErrBadCredentials = errors.New("apps: invalid instanceAppid or instanceSecrect")
	// ErrTokenInvalid: a missing, unknown, expired or revoked token
	// (platform code 100200).
	ErrTokenInvalid = errors.New("apps: token invalid or expired")
	// ErrNotFound: no such application.
	ErrNotFound = errors.New("apps: application not found")
)

// Credentials are an application's id and secret, shown once at creation.
type Credentials struct {
	Tenant string `json:"tenant"`
	AppID  string `json:"instanceAppid"`
	Secret string `json:"instanceSecrect"` // the platform's documented spelling
}

// Tokens is the answer of getOrgAccessToken and of a refresh.
type Tokens struct {
	Access  string `json:"orgAccessToken"`
	Refresh string `json:"orgRefreshToken"`
	Expire  int    `json:"expire"` // seconds the access token lives
}

// Principal is who a valid access token speaks for.
type Principal struct {
	TenantID int64
	Tenant   string // the tenant's name
	AppID    string
	Scopes   []string
}

// Can reports whether the principal's application holds the permission.
func (p Principal) Can(scope string) bool { return slices.Contains(p.Scopes, scope) }

// Store keeps tenants, applications and tokens in PostgreSQL. It is safe for
// concurrent use.
type Store struct {
	db  *pgxpool.Pool
	now func() time.Time
}

// NewStore returns a store on db.
func NewStore(db *pgxpool.Pool) *Store { return &Store{db: db, now: time.Now} }

// EnsureTenant returns the id of the named tenant, creating it if needed.
func (s *Store) EnsureTenant(ctx context.Context, name string) (int64, error) {
	if name == "" {
		return 0, errors.New("apps: tenant name is empty")
	}
	var id int64
	err := s.db.QueryRow(ctx, `
		WITH ins AS (INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING tenant_id)
		SELECT tenant_id FROM ins UNION ALL SELECT tenant_id FROM tenants WHERE name = $1 LIMIT 1`, name).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("apps: ensure tenant: %w", err)
	}
	return id, nil
}

// TenantID returns the id of an existing tenant, or ErrNotFound.
func (s *Store) TenantID(ctx context.Context, name string) (int64, error) {
	var id int64
	err := s.db.QueryRow(ctx, `SELECT tenant_id FROM tenants WHERE name = $1`, name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("apps: tenant %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("apps: tenant: %w", err)
	}
	return id, nil
}

// Create makes an application for the tenant (created if new) with the given
// permissions, and returns its credentials. The secret is not stored and
// cannot be shown again.
func (s *Store) Create(ctx context.Context, tenant, name string, scopes []string) (Credentials, error) {
	if name == "" {
		return Credentials{}, errors.New("apps: application name is empty")
	}
	if len(scopes) == 0 {
		return Credentials{}, errors.New("apps: at least one scope is required")
	}
	tenantID, err := s.EnsureTenant(ctx, tenant)
	if err != nil {
		return Credentials{}, err
	}
	appID := "gm" + hex.EncodeToString(randomBytes(8))
	secret := hex.EncodeToString(randomBytes(32))
	_, err = s.db.Exec(ctx, `INSERT INTO applications (appid, tenant_id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4, $5)`,
		appID, tenantID, name, hash(secret), scopes)
	if err != nil {
		return Credentials{}, fmt.Errorf("apps: create: %w", err)
	}
	return Credentials{Tenant: tenant, AppID: appID, Secret: secret}, nil
}

// Disable disables an application: its tokens stop working at once, and it
// can get no new ones.
func (s *Store) Disable(ctx context.Context, appID string) error {
	tag, err := s.db.Exec(ctx, `UPDATE applications SET disabled_at = coalesce(disabled_at, $2) WHERE appid = $1`, appID, s.now())
	if err != nil {
		return fmt.Errorf("apps: disable: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// Admit decides whether an application may get a token pair now. An error
// it returns is returned by the issuing call, which then issues nothing.
type Admit func(appID string) error

// IssueToken exchanges an application's credentials for a token pair.
func (s *Store) IssueToken(ctx context.Context, appID, secret string) (Tokens, error) {
	return s.IssueTokenIf(ctx, appID, secret, nil)
}

// IssueTokenIf is IssueToken asking admit, if not nil, once the credentials
// are verified and before issuing: callers without valid credentials never
// reach admit, so they cannot use up an application's issuing budget.
func (s *Store) IssueTokenIf(ctx context.Context, appID, secret string, admit Admit) (Tokens, error) {
	var stored []byte
	err := s.db.QueryRow(ctx, `SELECT secret_hash FROM applications WHERE appid = $1 AND disabled_at IS NULL`, appID).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tokens{}, ErrBadCredentials
	}
	if err != nil {
		return Tokens{}, fmt.Errorf("apps: issue token: %w", err)
	}
	if subtle.ConstantTimeCompare(stored, hash(secret)) != 1 {
		return Tokens{}, ErrBadCredentials
	}
	if admit != nil {
		if err := admit(appID); err != nil {
			return Tokens{}, err
		}
	}
	return s.issue(ctx, s.db, appID)
}

// Refresh exchanges a refresh token for a new pair; the refresh token is
// used up.
func (s *Store) Refresh(ctx context.Context, refreshToken string) (Tokens, error) {
	return s.RefreshIf(ctx, refreshToken, nil)
}

// RefreshIf is Refresh asking admit, if not nil, once the refresh token is
// verified; when admit refuses, the refresh token stays valid.
func (s *Store) RefreshIf(ctx context.Context, refreshToken string, admit Admit) (Tokens, error) {
	var out Tokens
	var refused error
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var appID string
		err := tx.QueryRow(ctx, `
			DELETE FROM app_tokens t USING applications a
			WHERE t.token_hash = $1 AND t.kind = 'refresh' AND t.expires_at > $2
			  AND a.appid = t.appid AND a.disabled_at IS NULL
			RETURNING t.appid`, hash(refreshToken), s.now()).Scan(&appID)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrTokenInvalid
		}
		if err != nil {
			return err
		}
		if admit != nil {
			if refused = admit(appID); refused != nil {
				return refused // rolls the refresh token's deletion back
			}
		}
		out, err = s.issue(ctx, tx, appID)
		return err
	})
	if refused != nil {
		return Tokens{}, refused
	}
	if err != nil && !errors.Is(err, ErrTokenInvalid) {
		return Tokens{}, fmt.Errorf("apps: refresh: %w", err)
	}
	return out, err
}

// execer is what issuing tokens needs: a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func (s *Store) issue(ctx context.Context, db execer, appID string) (Tokens, error) {
	now := s.now()
	t := Tokens{Access: newToken(), Refresh: newToken(), Expire: int(AccessTTL / time.Second)}
	_, err := db.Exec(ctx, `
		INSERT INTO app_tokens (token_hash, appid, kind, expires_at)
		VALUES ($1, $3, 'access', $4), ($2, $3, 'refresh', $5)`,
		hash(t.Access), hash(t.Refresh), appID, now.Add(AccessTTL), now.Add(RefreshTTL))
	if err != nil {
		return Tokens{}, fmt.Errorf("apps: store tokens: %w", err)
	}
	// Expired tokens are garbage; drop a few with each issue so the table
	// stays the size of the live set.
	_, err = db.Exec(ctx, `DELETE FROM app_tokens WHERE token_hash IN (
		SELECT token_hash FROM app_tokens WHERE expires_at < $1 LIMIT 100)`, now)
	if err != nil {
		return Tokens{}, fmt.Errorf("apps: purge tokens: %w", err)
	}
	return t, nil
}

// Authenticate returns the principal of a valid access token, or
// ErrTokenInvalid. A disabled application's tokens are invalid.
func (s *Store) Authenticate(ctx context.Context, accessToken string) (Principal, error) {
	if accessToken == "" {
		return Principal{}, ErrTokenInvalid
	}
	var p Principal
	err := s.db.QueryRow(ctx, `
		SELECT a.tenant_id, n.name, a.appid, a.scopes
		FROM app_tokens t JOIN applications a USING (appid) JOIN tenants n ON n.tenant_id = a.tenant_id
		WHERE t.token_hash = $1 AND t.kind = 'access' AND t.expires_at > $2 AND a.disabled_at IS NULL`,
		hash(accessToken), s.now()).Scan(&p.TenantID, &p.Tenant, &p.AppID, &p.Scopes)
	if errors.Is(err, pgx.ErrNoRows) {
		return Principal{}, ErrTokenInvalid
	}
	if err != nil {
		return Principal{}, fmt.Errorf("apps: authenticate: %w", err)
	}
	return p, nil
}

func hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return b
}

func newToken() string { return base64.RawURLEncoding.EncodeToString(randomBytes(32)) }
